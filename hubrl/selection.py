"""Pick the hub expert to fine-tune before any training ("select", Puigcerver et al., ICLR 2021).

*Scalable Transfer Learning with Expert Models* ranks a large pool of experts for a new task
with a cheap performance proxy computed on **frozen** features, then fine-tunes only the
winner. Their proxy is a kNN classifier's accuracy on a few labelled target images. An RL target
has no labels, so here the label is the one quantity every game defines: the discounted
return-to-go of a uniform random policy. An encoder whose features predict "how much reward is
coming" from a frame has learnt something about the target game's objects and dynamics that
the new policy and value heads can build on.

Pipeline, all on the CPU (also in a ``--device cuda`` run: the ranking that picks the expert
does not depend on a GPU's TF32 convolutions), about 40 s for two experts at the default 20k
frames (BENCHMARKS.md):

1. :func:`collect_target_data` plays ``frames`` agent steps of the target game with a uniform
   random policy in :func:`hubrl.envs.make_atari_vec_env` (the training env: life loss ends an episode,
   rewards clipped to {-1, 0, 1}) and labels each observation with its discounted return-to-go
   (``gamma=0.99``) within its episode. The data are collected once and shared by every expert,
   so the comparison is fair.
2. :func:`expert_features` runs each expert's NatureCNN encoder (eval mode, no grad, batched,
   frames scaled by 1/255 as SB3's policies do) over the observations.
3. :func:`proxy_score` fits a closed-form **ridge linear probe** on the features, cross-validated
   with folds split **by episode** (adjacent frames are near copies; a random split would let the
   probe memorise them), and returns the pooled held-out R² (higher is better; 0 is "no better
   than predicting the mean").

Choices and why:

* **Unfinished episodes.** The return of a step whose episode is still running when collection
  stops is not known. Steps are dropped while the unseen tail could still weigh more than
  ``max_tail_weight`` (default 0.1, i.e. the last 230 steps at gamma 0.99) of their return;
  earlier steps of the same episode are kept with the (bootstrap-free) return observed so far.
  Games truncated by the time limit are handled the same way. Bootstrapping the tail with a
  value estimate would need a value function, which is what is being selected.
* **Memory.** 20k stacked observations are 565 MB as ``(N, 4, 84, 84)`` uint8. Consecutive
  observations of one game share three of their four frames, so :class:`TargetData` stores each
  distinct frame once (about 141 MB at 20k) plus an ``(N, 4)`` index per observation, and
  materialises stacks per batch. The reconstruction is exact: a new frame is appended alone only
  when the new stack's first three frames equal the previous stack's last three pixel for pixel;
  otherwise (a new game) all four frames are stored.
* **Ridge over kNN.** The paper's kNN needs a distance between all pairs of frames (quadratic in
  the data; ``probe="knn"`` therefore scores a 4k-frame subsample, 1.5-3 s against 0.7-1.3 s
  for a ridge fit on all ~19k frames) and its score depends on ``k`` and the feature scale. The
  ridge probe is one 512x512 eigendecomposition per fold, scores every frame, and its regulariser
  is picked from a small grid on the same folds (slightly optimistic, by about the same amount
  for every expert). On the shipped hub both probes put the in-domain expert first on one source
  game only and are weak on the targets (under ridge the random encoder beats both experts on
  Alien), so ``select``'s choice carries little information there: the held-out R² per target
  and probe are in BENCHMARKS.md, "Selection proxy against a random encoder", with their command
  (``rank_hub.py --env <Game> --probe ridge|knn --random-baseline``).
  ``probe="knn"`` (cosine kNN regression, k=20) is kept as a cross-check.
* **Frames.** 20k by default: Alien gives ~19.3k labelled frames in ~85 episodes. Held-out R²
  differences between experts are small (a few hundredths on Alien and Gopher) and move with the
  seed by about as much, so fewer frames would make the ranking noisier still; the compact store
  keeps 20k at ~140 MB.
* **One expert.** A hub of one has nothing to rank: :func:`rank_experts` returns its single
  ranking without collecting data (``proxy=None``).

Measured cost (seconds and memory per expert): BENCHMARKS.md, same section.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch as th

from hubrl.envs import OBSERVATION_SHAPE
from hubrl.errors import UsageError
from hubrl.hub import Expert, Hub, HubError

__all__ = [
    "PROBES",
    "TargetData",
    "Ranking",
    "collect_target_data",
    "discounted_returns",
    "RANDOM_BASELINE",
    "encoder_features",
    "expert_features",
    "random_encoder",
    "ridge_cv_r2",
    "knn_cv_r2",
    "encoder_score",
    "proxy_score",
    "random_baseline",
    "rank_experts",
]

PROBES = ("ridge", "knn")
RANDOM_BASELINE = "random-init (reference)"
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 3, 8))
#: The flags that set the random-policy frames, named by the errors of too few (this module knows no command line).
FRAMES_FLAGS = "--timesteps of rank_hub.py, --select-timesteps of transfer.py --method select"


@dataclass
class TargetData:
    """Observations of the target game labelled with their discounted return-to-go.

    Stacked observations are stored as distinct frames plus an index (see the module docstring):
    ``observations(idx)`` returns ``frames[stack_index[idx]]``, uint8 ``(n, 4, 84, 84)``.

    :param frames: distinct single frames, uint8 ``(F, 84, 84)``.
    :param stack_index: for each observation, the indices of its frames in ``frames``, oldest
        first, int ``(N, C)``.
    :param returns: discounted return-to-go of each observation, float32 ``(N,)``.
    :param episodes: episode id of each observation (life-loss episodes in the training env),
        int64 ``(N,)``; cross-validation folds never split an episode.
    :param game: the game's ROM id, or a description for constructed data.
    :param info: how the data were made (steps, dropped steps, rewarded steps, seconds ...).
    """

    frames: np.ndarray
    stack_index: np.ndarray
    returns: np.ndarray
    episodes: np.ndarray
    game: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.stack_index)
        if self.frames.dtype != np.uint8 or self.frames.ndim != 3:
            raise ValueError(f"frames must be uint8 (F, H, W), got {self.frames.dtype} {self.frames.shape}.")
        if self.stack_index.ndim != 2 or len(self.returns) != n or len(self.episodes) != n:
            raise ValueError("stack_index (N, C), returns (N,) and episodes (N,) must describe the same N observations.")

    @classmethod
    def from_observations(
        cls, obs: np.ndarray, returns: np.ndarray, episodes: np.ndarray, game: str = "constructed",
    ) -> "TargetData":
        """Wrap already stacked observations ``(N, C, H, W)`` uint8 (no de-duplication)."""
        obs = np.ascontiguousarray(obs, dtype=np.uint8)
        n, c = obs.shape[:2]
        return cls(obs.reshape(n * c, *obs.shape[2:]), np.arange(n * c, dtype=np.int64).reshape(n, c),
                   np.asarray(returns, dtype=np.float32), np.asarray(episodes, dtype=np.int64), game)

    def __len__(self) -> int:
        return len(self.stack_index)

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        return (self.stack_index.shape[1], *self.frames.shape[1:])

    @property
    def n_episodes(self) -> int:
        return int(len(np.unique(self.episodes)))

    def observations(self, idx: slice | np.ndarray | None = None) -> np.ndarray:
        """Stacked observations uint8 ``(n, C, 84, 84)`` (all of them when ``idx`` is None: large)."""
        index = self.stack_index if idx is None else self.stack_index[idx]
        return self.frames[index]


@dataclass
class Ranking:
    """One expert's place: its proxy (held-out R², higher is better) and the seconds it took.

    ``baseline`` marks the random-init reference (:func:`random_baseline`), which is not an expert
    and is never the one to fine-tune.
    """

    name: str
    proxy: float | None
    seconds: float
    baseline: bool = False


def discounted_returns(
    rewards: np.ndarray, dones: np.ndarray, gamma: float = 0.99, truncated: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return-to-go of each step of one env's stream, and whether that return is complete.

    ``rewards[t]`` is the reward after acting on observation ``t``; ``dones[t]`` says the episode
    ended with that step, and ``truncated[t]`` that it was cut by a time limit (its return is then
    unknown, as for the trailing episode when the stream stops). The second output is, per step,
    the number of steps from it to the end of its episode, negated when that episode is unfinished
    or truncated (then it counts the steps seen so far).
    """
    n = len(rewards)
    returns = np.zeros(n, dtype=np.float64)
    to_end = np.zeros(n, dtype=np.int64)
    g, k, finished = 0.0, 0, False
    for t in range(n - 1, -1, -1):
        if dones[t]:
            g, k, finished = 0.0, 0, not (truncated is not None and truncated[t])
        g = float(rewards[t]) + gamma * g
        k += 1
        returns[t] = g
        to_end[t] = k if finished else -k
    return returns, to_end


class _FramePool:
    """A growable uint8 array of single frames."""

    def __init__(self, capacity: int, shape: tuple[int, int]) -> None:
        self.data = np.empty((max(capacity, 16), *shape), dtype=np.uint8)
        self.size = 0

    def add(self, frames: np.ndarray) -> np.ndarray:
        n = len(frames)
        if self.size + n > len(self.data):
            grown = np.empty((max(len(self.data) + len(self.data) // 4, self.size + n), *self.data.shape[1:]), dtype=np.uint8)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : self.size + n] = frames
        self.size += n
        return np.arange(self.size - n, self.size, dtype=np.int64)


def _more_frames_hint(frames: int, n_envs: int, min_seen: int) -> str:
    """What to do about too few frames, for an error message: the least number of frames that
    leaves labelled observations of at least 2 episodes, when that can be known.

    A step of an unfinished episode is labelled once ``min_seen`` steps from it on were seen, so
    ``min_seen`` steps per env always label some, in an episode of their own per env: with 2 envs
    or more that is enough for cross-validation by episode whatever the game. One env needs an
    episode to end, which no number of frames promises.
    """
    need = n_envs * min_seen
    if n_envs >= 2 and frames < need:
        return (f"raise the agent steps ({FRAMES_FLAGS}) to at least {need} ({min_seen} in each of {n_envs} envs); "
                "the default 20k ranks more steadily")
    more = f"raise the agent steps ({FRAMES_FLAGS}), e.g. to {max(need, 2 * frames)}"
    return more + (", or collect with --n-envs 2 or more" if n_envs == 1 else "")


def collect_target_data(
    game: str,
    frames: int = 20_000,
    seed: int = 0,
    n_envs: int = 8,
    *,
    gamma: float = 0.99,
    max_tail_weight: float = 0.1,
    repeat_action_probability: float = 0.25,
) -> TargetData:
    """Play ``frames`` agent steps (over all envs) of ``game`` with a uniform random policy.

    The env is the training env (:func:`hubrl.envs.make_atari_vec_env`: life loss ends an episode,
    clipped rewards). Each observation is labelled with its discounted return-to-go; steps of
    unfinished episodes whose unseen tail could still weigh more than ``max_tail_weight`` of their
    return (``gamma ** steps_seen > max_tail_weight``) are dropped.

    :raises UnknownGameError: (a ValueError) for a game ale-py does not ship.
    :raises UsageError: (a ValueError) when ``frames`` is too small to leave labelled observations of
        at least 2 episodes (what cross-validation by episode needs), saying how many frames would.
    """
    from hubrl.envs import make_atari_vec_env, resolve_game

    game = resolve_game(game)
    frames, n_envs = int(frames), int(n_envs)
    if n_envs < 1:
        raise ValueError(f"n_envs must be at least 1, got {n_envs}.")
    if not 0.0 < max_tail_weight < 1.0 or not 0.0 < gamma < 1.0:
        raise ValueError("gamma and max_tail_weight must be in (0, 1).")
    if frames < n_envs:
        raise UsageError(f"{frames} random-policy agent steps cannot be spread over {n_envs} envs: "
                         f"{_more_frames_hint(frames, n_envs, _min_seen(gamma, max_tail_weight))}.")
    steps = frames // n_envs
    t0 = time.perf_counter()
    env = make_atari_vec_env(game, n_envs=n_envs, seed=seed, repeat_action_probability=repeat_action_probability)
    try:
        rng = np.random.default_rng(seed)
        n_actions = int(env.action_space.n)
        obs = env.reset()
        c = obs.shape[1]
        pool = _FramePool(steps * n_envs + 4 * c * n_envs, obs.shape[2:])
        current = np.stack([pool.add(o) for o in obs])  # (n_envs, C) frame indices of obs
        index = np.empty((steps, n_envs, c), dtype=np.int64)
        rewards = np.empty((steps, n_envs), dtype=np.float32)
        dones = np.empty((steps, n_envs), dtype=bool)
        truncated = np.zeros((steps, n_envs), dtype=bool)
        for t in range(steps):
            index[t] = current
            new_obs, reward, done, infos = env.step(rng.integers(0, n_actions, size=n_envs))
            rewards[t] = reward
            dones[t] = done
            for i in np.flatnonzero(done):
                truncated[t, i] = bool(infos[i].get("TimeLimit.truncated", False))
            shifted = (new_obs[:, :-1] == obs[:, 1:]).reshape(n_envs, -1).all(axis=1)
            new_index = np.empty_like(current)
            if shifted.any():
                new_index[shifted, :-1] = current[shifted, 1:]
                new_index[shifted, -1] = pool.add(new_obs[shifted, -1])
            for i in np.flatnonzero(~shifted):  # a new game: its stack shares nothing
                new_index[i] = pool.add(new_obs[i])
            current, obs = new_index, new_obs
    finally:
        env.close()

    min_seen = _min_seen(gamma, max_tail_weight)
    returns = np.empty((steps, n_envs), dtype=np.float64)
    episodes = np.empty((steps, n_envs), dtype=np.int64)
    keep = np.empty((steps, n_envs), dtype=bool)
    next_episode = 0
    for i in range(n_envs):
        returns[:, i], to_end = discounted_returns(rewards[:, i], dones[:, i], gamma, truncated[:, i])
        keep[:, i] = (to_end > 0) | (-to_end >= min_seen)
        episodes[:, i] = next_episode + np.concatenate([[0], np.cumsum(dones[:-1, i])])
        next_episode = int(episodes[-1, i]) + 1
    stack_index = index[keep]
    if not len(stack_index):
        raise UsageError(
            f"{frames} random-policy agent steps of {game} leave no observation with a known return (no episode ended "
            f"within {steps} steps per env): {_more_frames_hint(frames, n_envs, min_seen)}."
        )
    n_episodes = len(np.unique(episodes[keep]))
    if n_episodes < 2:  # found here, where the frames and envs are known, rather than by the probe's folds
        raise UsageError(
            f"{frames} random-policy agent steps of {game} leave labelled observations of {n_episodes} episode only "
            f"(cross-validation by episode needs 2): {_more_frames_hint(frames, n_envs, min_seen)}."
        )
    # Unlabelled tails leave unreferenced frames; compact (a copy: a transient second pool) only
    # when that saves more than about a tenth of the memory.
    used, inverse = np.unique(stack_index, return_inverse=True)
    if len(used) >= 0.9 * pool.size and len(pool.data) <= 1.1 * pool.size:
        frames_array = pool.data[: pool.size]
    else:
        frames_array, stack_index = pool.data[used], inverse.reshape(stack_index.shape).astype(np.int64)
    del pool
    info = {
        "steps": steps * n_envs,
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "rewarded_steps": int((rewards != 0)[keep].sum()),
        "gamma": gamma,
        "seed": seed,
        "n_envs": n_envs,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return TargetData(frames_array, stack_index, returns[keep].astype(np.float32), episodes[keep], game, info)


def _min_seen(gamma: float, max_tail_weight: float) -> int:
    """Steps of an unfinished episode to see after a step before its return is known well enough:
    the least ``n`` with ``gamma ** n <= max_tail_weight`` (230 at the defaults)."""
    return math.ceil(math.log(max_tail_weight) / math.log(gamma))


def _nature_cnn(observation_shape: Sequence[int], features_dim: int) -> th.nn.Module:
    import gymnasium as gym
    from stable_baselines3.common.torch_layers import NatureCNN

    space = gym.spaces.Box(0, 255, tuple(int(n) for n in observation_shape), np.uint8)
    return NatureCNN(space, features_dim=features_dim)


def _encoder(expert: Expert, observation_shape: Sequence[int]) -> th.nn.Module:
    encoder = _nature_cnn(observation_shape, expert.features_dim)
    encoder.load_state_dict(expert.encoder_state, strict=True)
    return encoder.eval()


def random_encoder(observation_shape: Sequence[int], seed: int = 0, features_dim: int = 512) -> th.nn.Module:
    """The NatureCNN that training from scratch starts from, seeded by ``seed``.

    SB3's ``ActorCriticPolicy`` re-initialises its features extractor orthogonally with gain
    sqrt(2) (``ortho_init=True``), so that is done here too: the reference is what the
    ``scratch`` method's encoder knows before any training. The global torch RNG is left as it was.
    """
    from functools import partial

    from stable_baselines3.common.policies import BasePolicy

    with th.random.fork_rng(devices=[]):
        th.manual_seed(seed)
        encoder = _nature_cnn(observation_shape, features_dim)
        encoder.apply(partial(BasePolicy.init_weights, gain=float(np.sqrt(2))))
    return encoder.eval()


def _check_channels(expert: Expert, data: TargetData) -> None:
    if expert.in_channels != data.observation_shape[0]:
        raise HubError(
            f"Expert {expert.name!r} reads {expert.in_channels} stacked frames but the target data have "
            f"{data.observation_shape[0]}: use experts trained with frame_stack={data.observation_shape[0]}."
        )


def _check_probe(probe: str) -> None:
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}: choose one of {', '.join(PROBES)}.")


def encoder_features(encoder: th.nn.Module, data: TargetData, batch_size: int = 256) -> np.ndarray:
    """Frozen features of every observation from any encoder of ``(B, C, 84, 84)`` floats, float32 ``(N, d)``.

    The encoder runs in eval mode (its mode is restored after) without grad, in batches, on the
    device its parameters are on; frames are scaled to [0, 1] as SB3's ``preprocess_obs`` does
    before the extractor.
    """
    was_training, out = encoder.training, None
    device = next(encoder.parameters(), th.empty(0)).device  # frames go where the encoder is (the CPU in rank_experts)
    encoder.eval()
    try:
        with th.inference_mode():
            for start in range(0, len(data), batch_size):
                batch = th.from_numpy(data.observations(slice(start, start + batch_size))).to(device).float().div_(255.0)
                features = encoder(batch).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(data), features.shape[1]), dtype=np.float32)
                out[start : start + len(features)] = features
    finally:
        encoder.train(was_training)
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def expert_features(expert: Expert, data: TargetData, batch_size: int = 256) -> np.ndarray:
    """The expert's frozen NatureCNN features of every observation, float32 ``(N, features_dim)``."""
    _check_channels(expert, data)
    return encoder_features(_encoder(expert, data.observation_shape), data, batch_size=batch_size)


def _folds(groups: np.ndarray, folds: int) -> np.ndarray:
    """Assign whole groups (episodes) to ``folds`` folds of near-equal size, deterministically."""
    ids, counts = np.unique(groups, return_counts=True)
    k = min(int(folds), len(ids))
    if k < 2:
        raise UsageError(
            f"The target data hold {len(ids)} episode(s): cross-validation by episode needs at least 2. "
            f"Collect more agent steps ({FRAMES_FLAGS})."
        )
    sizes = np.zeros(k, dtype=np.int64)
    fold_of_id = np.empty(len(ids), dtype=np.int64)
    for j in np.lexsort((ids, -counts)):  # largest episodes first, each to the smallest fold
        f = int(np.argmin(sizes))
        fold_of_id[j] = f
        sizes[f] += counts[j]
    return fold_of_id[np.searchsorted(ids, groups)]


def _r2(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pooled R² of predictions ``pred`` (..., N) against ``y`` (N,)."""
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - ((pred - y) ** 2).sum(axis=-1) / sst


def _check_targets(y: np.ndarray) -> None:
    if len(y) < 2 or not np.isfinite(y).all() or float(y.std()) <= 1e-8 * max(1.0, float(abs(y).max())):
        raise UsageError(
            "The target returns are constant (the random policy scored nothing in the collected frames), so no "
            f"expert's features can predict them: collect more agent steps ({FRAMES_FLAGS})."
        )


def ridge_cv_r2(
    features: np.ndarray, targets: np.ndarray, groups: np.ndarray, folds: int = 5, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> tuple[float, float]:
    """Held-out R² of a ridge regression from ``features`` to ``targets``, cross-validated by group.

    Features are standardised with the training folds' statistics (constant features are
    dropped); for each regulariser ``alpha`` (in units of the standardised features' variance)
    the out-of-fold predictions of all folds are pooled into one R². Closed form: one
    ``d x d`` eigendecomposition per fold, every alpha at once. Returns ``(best R², its alpha)``.
    """
    y = np.asarray(targets, dtype=np.float64)
    _check_targets(y)
    x = np.asarray(features, dtype=np.float64)
    fold_of = _folds(np.asarray(groups), folds)
    alphas = np.asarray(alphas, dtype=np.float64)
    gram, sums, xy, n, sy = x.T @ x, x.sum(0), x.T @ y, len(y), y.sum()
    preds = np.empty((len(alphas), n))
    for f in range(int(fold_of.max()) + 1):
        test = fold_of == f
        xt, yt = x[test], y[test]
        m = n - len(yt)
        mu = (sums - xt.sum(0)) / m
        ybar = (sy - yt.sum()) / m
        cov = (gram - xt.T @ xt) / m - np.outer(mu, mu)
        c = (xy - xt.T @ yt) / m - mu * ybar
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        inv = np.where(std > 1e-6 * max(float(std.max()), 1e-12), 1.0 / np.maximum(std, 1e-300), 0.0)
        lam, vec = np.linalg.eigh(cov * np.outer(inv, inv))
        proj = vec.T @ (c * inv)
        weights = vec @ (proj[:, None] / (np.clip(lam, 0.0, None)[:, None] + alphas[None, :]))  # (d, A)
        preds[:, test] = (ybar + ((xt - mu) * inv) @ weights).T
    scores = _r2(y, preds)
    best = int(np.argmax(scores))
    return float(scores[best]), float(alphas[best])


def knn_cv_r2(
    features: np.ndarray, targets: np.ndarray, groups: np.ndarray, folds: int = 5, k: int = 20,
    max_queries: int = 4000, seed: int = 0,
) -> float:
    """Held-out R² of cosine kNN regression (mean return of the ``k`` nearest training frames).

    The paper's proxy, for regression. Pairwise similarities cost ``queries x N x d``, so at most
    ``max_queries`` held-out frames (a random subset) are scored; neighbours come from the other
    folds only.
    """
    y = np.asarray(targets, dtype=np.float64)
    _check_targets(y)
    fold_of = _folds(np.asarray(groups), folds)
    x = th.nn.functional.normalize(th.as_tensor(np.asarray(features, dtype=np.float32)), dim=1)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(len(y), size=min(max_queries, len(y)), replace=False))
    preds = np.empty(len(queries))
    for f in range(int(fold_of.max()) + 1):
        q = queries[fold_of[queries] == f]
        train = np.flatnonzero(fold_of != f)
        kk = min(k, len(train))
        ytr = th.as_tensor(y[train])
        xtr = x[train]
        for start in range(0, len(q), 512):
            sim = x[q[start : start + 512]] @ xtr.T
            nearest = sim.topk(kk, dim=1).indices
            pos = np.searchsorted(queries, q[start : start + 512])
            preds[pos] = ytr[nearest].mean(dim=1).numpy()
    return float(_r2(y[queries], preds))


def encoder_score(
    encoder: th.nn.Module, data: TargetData, probe: str = "ridge", folds: int = 5, batch_size: int = 256,
) -> float:
    """Held-out R² of ``probe`` on any encoder's frozen features (:func:`encoder_features`).

    :param probe: ``"ridge"`` (default: closed-form ridge, all frames) or ``"knn"`` (cosine kNN, a
        subsample of query frames).
    """
    _check_probe(probe)
    _check_targets(np.asarray(data.returns, dtype=np.float64))
    features = encoder_features(encoder, data, batch_size=batch_size)
    if probe == "knn":
        return knn_cv_r2(features, data.returns, data.episodes, folds=folds)
    return ridge_cv_r2(features, data.returns, data.episodes, folds=folds)[0]


def proxy_score(expert: Expert, data: TargetData, probe: str = "ridge", folds: int = 5, batch_size: int = 256) -> float:
    """The expert's transfer proxy on the target data: :func:`encoder_score` of its NatureCNN encoder."""
    _check_probe(probe)
    _check_channels(expert, data)
    return encoder_score(_encoder(expert, data.observation_shape), data, probe=probe, folds=folds, batch_size=batch_size)


def random_baseline(data: TargetData, probe: str = "ridge", seed: int = 0, features_dim: int = 512) -> Ranking:
    """The reference score: :func:`encoder_score` of a :func:`random_encoder` on the same data.

    A proxy only tells experts apart when they beat it: features of an untrained NatureCNN already
    predict some of the return (a frame's brightness, how many objects it shows ...).
    """
    t0 = time.perf_counter()
    score = encoder_score(random_encoder(data.observation_shape, seed, features_dim), data, probe=probe)
    return Ranking(RANDOM_BASELINE, score, time.perf_counter() - t0, baseline=True)


def rank_experts(
    hub: Hub,
    game: str,
    frames: int = 20_000,
    seed: int = 0,
    *,
    n_envs: int = 8,
    probe: str = "ridge",
    data: TargetData | None = None,
    on_ranked: Callable[[Ranking], None] | None = None,
    repeat_action_probability: float = 0.25,
) -> list[Ranking]:
    """Rank the hub's experts for ``game`` by :func:`proxy_score`, best first.

    The target data are collected once (or given as ``data``; with the run's sticky actions,
    ``repeat_action_probability``) and shared by all experts. A hub of
    one expert is returned as is (``proxy=None``), without collecting anything. ``on_ranked`` is
    called after each expert is scored (progress reporting).

    Cost: collection once (~20-25 s at 20k frames on the project's 2-core VM) plus ~8 s per expert
    (see the module docstring).
    """
    from hubrl.envs import resolve_game

    game = resolve_game(game)
    _check_probe(probe)
    if len(hub) == 0:
        raise HubError("The hub is empty: give a hub folder with experts, or --sources ZIP ...")
    hub.validate(data.observation_shape if data is not None else OBSERVATION_SHAPE)  # before spending time on data
    if len(hub) == 1:  # nothing to rank, but one the target's frames cannot feed is refused all the same
        return [Ranking(hub.experts[0].name, None, 0.0)]
    if data is None:
        data = collect_target_data(game, frames=frames, seed=seed, n_envs=n_envs,
                                   repeat_action_probability=repeat_action_probability)
    _check_targets(np.asarray(data.returns, dtype=np.float64))
    rankings = []
    for expert in hub:
        t0 = time.perf_counter()
        score = proxy_score(expert, data, probe=probe)
        rankings.append(Ranking(expert.name, score, time.perf_counter() - t0))
        if not _finite(score):
            print(f"warning: expert {expert.name} scored {score} on the selection proxy (its features are not "
                  "finite: a damaged expert?); it is ranked last", file=sys.stderr)
        if on_ranked is not None:
            on_ranked(rankings[-1])
    return sorted(rankings, key=_best_first)


def _finite(proxy: float | None) -> bool:
    return proxy is not None and math.isfinite(proxy)


def _best_first(ranking: Ranking) -> tuple[bool, float]:
    """Sort key, highest proxy first; a score that is not a number (features holding NaN or inf: a
    damaged expert) ranks last, never first (``-nan`` in a sort key leaves the order arbitrary)."""
    finite = _finite(ranking.proxy)
    return (not finite, -ranking.proxy if finite else 0.0)
