"""Several processes, one training run: the process group from torchrun or srun, and collectives.

One process per GPU (or, on CPUs, per worker) joins the default process group: NCCL on CUDA,
gloo otherwise. `World` is what a rank needs to know about it. Every helper is a no-op in a
single-process world (no process group), so callers need no branches for it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from itertools import product
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from robustcore.cost import Cost
from robustcore.io import InputError

# A port for a Slurm job's rendezvous: derived from its job id, inside the unprivileged range.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 20000
TIMEOUT = timedelta(minutes=30)  # a rank that never arrives fails the job instead of hanging


@dataclass(frozen=True)
class World:
    """This process's place in the run: its rank, the number of ranks, its local rank, device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def is_distributed(world: World | None) -> bool:
    """True when `world` has more than one rank."""
    return world is not None and world.world_size > 1


def is_main(world: World | None) -> bool:
    """True on the rank that writes files (rank 0, or the only process)."""
    return world is None or world.rank == 0


def _env_int(name: str, *, minimum: int = 0) -> int:
    """An integer environment variable; InputError naming it when missing or malformed."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        raise InputError(f"environment variable {name} is not set (needed for a distributed run)")
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r} is not an integer") from None
    if value < minimum:
        raise InputError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def _split_top_level(text: str) -> list[str]:
    """Split a Slurm host list at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part for part in parts if part]


def _expand_range(body: str, name: str) -> list[str]:
    """The items of one bracket body such as "01-04,07" (zero padding kept)."""
    items: list[str] = []
    for item in body.split(","):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise InputError(f"{name}: cannot parse the range [{body}]")
        if not dash:
            items.append(low)
            continue
        if int(high) < int(low):
            raise InputError(f"{name}: descending range {item!r} in [{body}]")
        width = len(low)
        items.extend(str(k).zfill(width) for k in range(int(low), int(high) + 1))
    return items


def expand_nodelist(nodelist: str, name: str = "SLURM_JOB_NODELIST") -> list[str]:
    """The hosts of a Slurm node list: "gpu[01-03,07],cpu5" -> gpu01, gpu02, gpu03, gpu07, cpu5."""
    if nodelist.count("[") != nodelist.count("]"):
        raise InputError(f"{name}={nodelist!r}: unbalanced brackets")
    hosts: list[str] = []
    for part in _split_top_level(nodelist.strip()):
        pieces = re.split(r"\[([^\]]*)\]", part)  # text, body, text, body, ..., text
        if any("[" in p or "]" in p for p in pieces[::2]):
            raise InputError(f"{name}={nodelist!r}: cannot parse {part!r}")
        choices = [[p] if i % 2 == 0 else _expand_range(p, name) for i, p in enumerate(pieces)]
        hosts.extend("".join(combo) for combo in product(*choices))
    if not hosts:
        raise InputError(f"{name}={nodelist!r} names no host")
    return hosts


def _rendezvous_slurm() -> tuple[str, int]:
    """MASTER_ADDR/MASTER_PORT if set, else the job's first host and a port from its job id."""
    address = os.environ.get("MASTER_ADDR")
    if not address:
        name = "SLURM_JOB_NODELIST" if os.environ.get("SLURM_JOB_NODELIST") else "SLURM_NODELIST"
        nodelist = os.environ.get(name)
        if not nodelist:
            raise InputError(
                "environment variable SLURM_JOB_NODELIST (or SLURM_NODELIST, or MASTER_ADDR) "
                "is not set (needed for a distributed Slurm run)"
            )
        address = expand_nodelist(nodelist, name)[0]
    if os.environ.get("MASTER_PORT"):
        port = _env_int("MASTER_PORT", minimum=1)
    else:
        port = SLURM_PORT_BASE + _env_int("SLURM_JOB_ID") % SLURM_PORT_SPAN
    return address, port


def _launch() -> tuple[int, int, int, str, int] | None:
    """(rank, world size, local rank, address, port) from torchrun's or srun's environment."""
    if os.environ.get("WORLD_SIZE"):  # torchrun (or any launcher following its convention)
        world_size = _env_int("WORLD_SIZE", minimum=1)
        if world_size == 1:
            return None
        rank = _env_int("RANK")
        local_rank = _env_int("LOCAL_RANK") if os.environ.get("LOCAL_RANK") else 0
        if not os.environ.get("MASTER_ADDR"):
            raise InputError("environment variable MASTER_ADDR is not set (WORLD_SIZE > 1)")
        address, port = os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", minimum=1)
        if rank >= world_size:
            raise InputError(f"environment variable RANK={rank} must be < WORLD_SIZE={world_size}")
        return rank, world_size, local_rank, address, port
    if os.environ.get("SLURM_NTASKS") and os.environ.get("SLURM_PROCID"):  # srun, one task/GPU
        world_size = _env_int("SLURM_NTASKS", minimum=1)
        if world_size == 1:
            return None
        rank = _env_int("SLURM_PROCID")
        if rank >= world_size:
            raise InputError(
                f"environment variable SLURM_PROCID={rank} must be < SLURM_NTASKS={world_size}"
            )
        local_rank = _env_int("SLURM_LOCALID") if os.environ.get("SLURM_LOCALID") else 0
        return (rank, world_size, local_rank, *_rendezvous_slurm())
    return None


def launched_size() -> int:
    """The number of ranks torchrun's or srun's environment describes (1: none)."""
    launch = _launch()
    return 1 if launch is None else launch[1]


def launched_rank() -> int:
    """This process's rank in the launch torchrun's or srun's environment describes (0: none)."""
    launch = _launch()
    return 0 if launch is None else launch[0]


def init_from_env(device_name: str) -> World:
    """Join the process group torchrun or srun describes (else: a single-process World)."""
    device = torch.device(device_name)
    launch = _launch()
    if launch is None:
        return World(0, 1, 0, device)
    rank, world_size, local_rank, address, port = launch
    local_name = "LOCAL_RANK" if os.environ.get("WORLD_SIZE") else "SLURM_LOCALID"
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 1:
            # Slurm bound this task to its own GPU (CUDA_VISIBLE_DEVICES lists one): it is cuda:0.
            local_rank_device = 0
        elif local_rank >= count:
            raise InputError(
                f"environment variable {local_name}={local_rank}: only {count} GPU(s) visible"
            )
        else:
            local_rank_device = local_rank
        device = torch.device("cuda", local_rank_device)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    host = f"[{address}]" if ":" in address else address  # an IPv6 address
    dist.init_process_group(
        backend,
        init_method=f"tcp://{host}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=TIMEOUT,
    )
    return World(rank, world_size, local_rank, device)


def destroy(world: World | None) -> None:
    """Leave the process group (when this process joined one)."""
    if is_distributed(world) and dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(total: int, world: World) -> range:
    """The rows of a global batch of `total` rows this rank takes: rank, rank + W, ..."""
    return range(world.rank, total, world.world_size)


def shard_batch(
    index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, world: World
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's rows (rank::world_size) of one global batch."""
    if not is_distributed(world):
        return index, x, y
    step, start = world.world_size, world.rank
    return index[start::step], x[start::step].contiguous(), y[start::step]


def batch_shard(total: int, batch_size: int, world: World | None) -> np.ndarray:
    """Positions (0..total-1) of this rank's whole batches of an unshuffled pass over `total` rows.

    The pass is cut into batches of `batch_size` (the last may be shorter); rank r takes
    batches r, r + W, r + 2W, ... A loader over these rows with the same batch size yields
    exactly those batches, row for row, so every per-sample result equals the 1-process one.
    One process: every position.
    """
    positions = np.arange(total, dtype=np.int64)
    if not is_distributed(world):
        return positions
    return positions[(positions // int(batch_size)) % world.world_size == world.rank]


def gather_in_order(items: Iterable[Any], world: World | None) -> Iterator[Any]:
    """On rank 0, every rank's items in global order; on the other ranks, send them, yield none.

    Rank r holds items r, r + W, r + 2W, ... of one sequence (its whole batches, `batch_shard`):
    rank 0 yields items 0, 1, 2, ..., its own next one, then each other rank's (round robin,
    point to point, one item at a time), so it holds at most one other rank's item at once.
    Every rank must exhaust the iterator: the other ranks send as it runs. Items are pickled
    (numpy arrays, frames, blocks). One process: `items` as they come.
    """
    if not is_distributed(world):
        yield from items
        return
    if world.rank != 0:
        for item in items:
            dist.send_object_list([True, item], dst=0)
        dist.send_object_list([False, None], dst=0)  # the end of this rank's items
        return
    own = iter(items)
    finished: set[int] = set()
    while len(finished) < world.world_size:
        for source in range(world.world_size):
            if source in finished:
                continue
            if source == 0:
                more, item = True, None
                try:
                    item = next(own)
                except StopIteration:
                    more = False
            else:
                box: list[Any] = [None, None]
                dist.recv_object_list(box, src=source)
                more, item = box
            if not more:
                finished.add(source)
            elif finished:
                raise RuntimeError(
                    f"gather_in_order: rank {source} sent an item after rank(s) "
                    f"{sorted(finished)} ended; rank r must hold items r, r + W, ..."
                )
            else:
                yield item


def all_gather_in_order(items: Iterable[Any], world: World | None) -> list[Any]:
    """`gather_in_order`'s list on every rank (rank 0 gathers, then broadcasts it)."""
    gathered = list(gather_in_order(items, world))
    return broadcast_object(gathered if is_main(world) else None, world)


def broadcast_object(obj: Any, world: World | None, source: int = 0) -> Any:
    """Rank `source`'s `obj` (picklable) on every rank."""
    if not is_distributed(world):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def sum_over_ranks(value: int | float, world: World | None) -> int | float:
    """The sum of every rank's `value` (on every rank)."""
    return sum(all_gather_objects(value, world))


def barrier(world: World | None) -> None:
    """Wait until every rank arrives."""
    if is_distributed(world):
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, world: World | None) -> torch.Tensor:
    """Sum `tensor` over ranks, in place (it must live on world.device); return it."""
    if is_distributed(world):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, world: World | None) -> torch.Tensor:
    """Elementwise maximum of `tensor` over ranks, in place; return it."""
    if is_distributed(world):
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: Any, world: World | None) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order."""
    if not is_distributed(world):
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def _by_dtype(tensors: list[torch.Tensor]) -> dict[torch.dtype, list[int]]:
    """Positions of `tensors` grouped by dtype (one flat buffer per group)."""
    groups: dict[torch.dtype, list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault(tensor.dtype, []).append(i)
    return groups


def broadcast_state(model: nn.Module, world: World | None, source: int = 0) -> None:
    """Give every rank rank `source`'s parameters and buffers (one flat broadcast per dtype)."""
    if not is_distributed(world):
        return
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.numel() > 0]
    for positions in _by_dtype(tensors).values():
        group = [tensors[i] for i in positions]
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=source)
        offset = 0
        with torch.no_grad():
            for tensor in group:
                tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


def all_reduce_gradients(model: nn.Module, world: World | None, weight: float) -> None:
    """Set each gradient to Σ_r weight_r·g_r over ranks (weight_r: rank r's share of the batch).

    With g_r the gradient of rank r's mean loss over its n_r rows and weight_r = n_r / N, the
    result is the gradient of the global batch's mean loss, also when the shards are uneven.
    One flat all_reduce per gradient dtype, no host read. A gradient missing (None) on a rank
    counts as zero there; afterwards every trainable parameter has its reduced gradient.
    """
    if not is_distributed(world):
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for positions in _by_dtype(params).values():
        group = [params[i] for i in positions]
        flat = torch.cat(
            [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in group]
        )
        flat.mul_(weight)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for param in group:
            chunk = flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
            if param.grad is None:
                param.grad = chunk.clone()
            else:
                param.grad.copy_(chunk)


def gather_rows(tensor: torch.Tensor, total: int, world: World | None) -> torch.Tensor:
    """The global batch of `total` rows from every rank's shard (rank::W rows), in batch order."""
    if not is_distributed(world):
        return tensor
    size = world.world_size
    longest = -(-total // size)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous())
    out = tensor.new_empty((total, *tensor.shape[1:]))
    for rank, part in enumerate(parts):
        out[rank::size] = part[: len(range(rank, total, size))]
    return out


def state_digest(state: torch.Tensor) -> int:
    """A 62-bit digest of a generator state (to check that ranks drew the same numbers)."""
    data = state.cpu().contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 2


def all_reduce_cost(cost: Cost, world: World | None, since: dict[str, Any]) -> None:
    """Make `cost` the run's total: what it held at `since` plus every rank's counts after it.

    `since` is Cost.state() taken before the ranks started counting (the same on all ranks);
    wall seconds become the slowest rank's.
    """
    if world is not None:
        cost.world_size = world.world_size
    if not is_distributed(world):
        return
    states = all_gather_objects(cost.state(), world)

    def total(key: str, part: str | None = None) -> int:
        base = since[key] if part is None else since[key].get(part, 0)
        counts = [s[key] if part is None else s[key].get(part, 0) for s in states]
        return base + sum(c - base for c in counts)

    for key in ("forward", "backward"):
        purposes = sorted({p for s in states for p in s[key]} | set(since[key]))
        setattr(cost, key, {p: total(key, p) for p in purposes})
    cost.samples_perturbed = total("samples_perturbed")
    cost.attack_steps = total("attack_steps")
    cost.wall_seconds = max(s["wall_seconds"] for s in states)
