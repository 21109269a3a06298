"""Matmul and convolution FLOPs of a step, counted from the program JAX traces rather than from XLA's cost analysis.

XLA's `compiled.cost_analysis()` counts each loop body once: for a decoder with `scan_layers` (a scan over
layers) and the blocked loss (a scan over token blocks) it reported 73.8 GFLOP for a step doing ~418, so
every MFU taken from it was understated. `count_flops` walks the jaxpr of the real function (`jax.make_jaxpr`,
abstract arguments allowed: nothing compiled or allocated) after dead-code elimination and counts matmul and
convolution FLOPs (elementwise work left out, as in PaLM / MaxText) with loops multiplied out: scan bodies x
length, while bodies x trip count where a counter is compared with a constant (else once, reported in
`unbounded_loops`), the costlier cond branch, shard_map bodies x shards, other nested jaxprs (jit, custom_jvp /
custom_vjp calls, remat) once. It returns `executed` (everything run, remat recomputation included: the HFU
numerator) and `model` (without the recomputation: the MFU numerator of PaLM / MaxText).

How recomputation is told apart, found empirically and checked in tests/train/test_perf.py against the same step
traced with remat off: reverse-mode AD of `jax.checkpoint` (used by `nnx.remat` and the decoder's `remat`) leaves
the forward pass unwrapped and puts a `checkpoint` eqn with `differentiated=True` in the backward pass. Its body
comes from JAX's backward pass, which first re-evaluates every non-linear equation from the saved inputs (the
recomputation), then emits the transposed, cotangent-linear ones; the cotangents are the body's last inputs. So
the recomputation is what does not depend on the shortest input suffix for which every matmul independent of it
precedes every matmul depending on it. Under `jax_remat3` (JAX's next implementation) the backward re-runs the
block on the outputs of an `optimization_barrier`: what only such a barrier feeds is the recomputation. A body
of neither shape counts as model FLOPs and is reported in `unresolved_remat`.

The blocked loss (`models/losses.py`) forms its gradients in the forward pass of its custom VJP (the three head
matmuls of materialised logits, two with a frozen head): counted where they run, in both totals.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.extend import core as jcore

# -- counting the jaxpr ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Matmul + convolution FLOPs of one call, whole program (all devices together)."""

    executed: float  # everything run, remat recomputation included (hardware FLOPs)
    model: float  # without remat recomputation (the MFU numerator)
    unbounded_loops: int = 0  # while loops whose trip count could not be derived (body counted once)
    unresolved_remat: int = 0  # differentiated checkpoint bodies whose recomputation could not be separated

    @property
    def recomputed(self) -> float:
        return self.executed - self.model


def count_flops(fn: Callable, *args, **kwargs) -> FlopCount:
    """FLOPs of `fn(*args, **kwargs)` from its jaxpr; arguments may be arrays or `jax.ShapeDtypeStruct`s.

    Trace under the mesh the function runs on (`with jax.set_mesh(mesh):`) when it places shardings. Shapes in a
    jit-level jaxpr are global, so the count is for the whole batch over all devices.
    """
    return count_jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def count_jaxpr_flops(closed: Any) -> FlopCount:
    """`count_flops` for an already traced (Closed)Jaxpr."""
    c = _jaxpr_cost(_dce(_open(closed)))
    return FlopCount(executed=c.executed, model=c.executed - c.recompute, unbounded_loops=c.unbounded,
                     unresolved_remat=c.unresolved)


@dataclasses.dataclass
class _Cost:
    executed: float = 0.0
    recompute: float = 0.0
    unbounded: int = 0
    unresolved: int = 0

    def add(self, other: "_Cost", times: float = 1.0, *, all_recompute: bool = False) -> None:
        self.executed += times * other.executed
        self.recompute += times * (other.executed if all_recompute else other.recompute)
        self.unbounded += other.unbounded
        self.unresolved += other.unresolved


def _dce(jaxpr: jcore.Jaxpr) -> jcore.Jaxpr:
    """Dead-code elimination with JAX's own per-primitive rules (a custom VJP's unused weight gradient is the
    typical case); the un-eliminated jaxpr if this JAX keeps the pass elsewhere."""
    try:
        from jax._src.interpreters import partial_eval as pe

        if jaxpr.constvars:
            return pe.dce_jaxpr_consts(jaxpr, [True] * len(jaxpr.outvars), instantiate=True)[0]
        return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars), instantiate=True)[0]
    except Exception:  # noqa: BLE001 - an internal API: counting without DCE only overcounts dead code
        return jaxpr


def _open(j: Any) -> jcore.Jaxpr:
    return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _size(shape) -> int:
    return int(math.prod(int(d) for d in shape))


def _dot_flops(eqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
    factor = 4 if np.issubdtype(out.dtype, np.complexfloating) else 1  # a complex multiply-add is 4 real ones
    return 2.0 * factor * _size(out.shape) * _size(lhs.shape[d] for d in lhs_contract)


def _conv_flops(eqn) -> float:
    """2 × (output batch × output features) × kernel input features × the kernel taps that land on real input.

    Taps on padding or on the holes of a dilated input (the transposed convolutions of a backward pass) are not
    counted, as in XLA's cost analysis; the kernel's input-feature axis is already per group, so the formula
    holds for feature- and batch-grouped convolutions alike. Validity is separable per spatial axis.
    """
    p = eqn.params
    lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = (dn.lhs_spec, dn.rhs_spec, dn.out_spec) if dn is not None else (
        (tuple(range(lhs.ndim)),) * 3)
    taps, ones = 1, (1,) * len(p["window_strides"])
    for i, (ld, rd, od) in enumerate(zip(lhs_spec[2:], rhs_spec[2:], out_spec[2:])):
        n, k, o = lhs.shape[ld], rhs.shape[rd], out.shape[od]
        l_dil, r_dil = (p.get("lhs_dilation") or ones)[i], (p.get("rhs_dilation") or ones)[i]
        pos = np.arange(o)[:, None] * p["window_strides"][i] + np.arange(k)[None, :] * r_dil - p["padding"][i][0]
        taps *= int(np.count_nonzero((pos >= 0) & (pos <= (n - 1) * l_dil) & (pos % l_dil == 0)))
    return 2.0 * out.shape[out_spec[0]] * out.shape[out_spec[1]] * rhs.shape[rhs_spec[1]] * taps


def _jaxpr_cost(jaxpr: jcore.Jaxpr) -> _Cost:
    """Cost of one evaluation; `known` holds the integer scalars computed from literals (loop trip counts)."""
    known: dict = {}
    total, barrier = _Cost(), _barrier_fed(jaxpr)
    for eqn in jaxpr.eqns:
        total.add(_eqn_cost(eqn, known), all_recompute=barrier[id(eqn)])
        _propagate_constant(eqn, known)
    return total


def _eqn_cost(eqn, known: dict) -> _Cost:
    name = eqn.primitive.name
    p = eqn.params
    if name == "dot_general":
        return _Cost(executed=_dot_flops(eqn))
    if name == "conv_general_dilated":
        return _Cost(executed=_conv_flops(eqn))
    c = _Cost()
    if name == "scan":
        c.add(_jaxpr_cost(_open(p["jaxpr"])), times=int(p["length"]))
    elif name == "while":
        trips = _while_trips(eqn, known)
        c.unbounded += trips is None
        c.add(_jaxpr_cost(_open(p["body_jaxpr"])), times=1 if trips is None else trips)
        c.add(_jaxpr_cost(_open(p["cond_jaxpr"])), times=2 if trips is None else trips + 1)
    elif name == "cond":
        branches = [_jaxpr_cost(_open(b)) for b in p["branches"]]
        c.add(max(branches, key=lambda b: b.executed))
    elif name == "shard_map":
        c.add(_jaxpr_cost(_open(p["jaxpr"])), times=_shard_count(p))
    elif name in ("checkpoint", "remat", "remat2") and p.get("differentiated"):
        c = _remat_cost(_open(p["jaxpr"]))
    else:  # jit, closed_call, custom_jvp_call, custom_vjp_call, non-differentiated remat, ...: each sub-jaxpr once
        for sub in jcore.jaxprs_in_params(p):
            c.add(_jaxpr_cost(sub))
    return c


def _shard_count(params: dict) -> int:
    """Devices a shard_map body runs on: the product of its manual mesh axes (its shapes are per shard)."""
    sizes = dict(getattr(params.get("mesh"), "shape", {}) or {})
    axes = params.get("newly_manual_axes", params.get("manual_axes"))
    axes = [a for a in sizes if a not in set(params.get("auto", ()))] if axes is None else axes
    return int(math.prod(sizes.get(a, 1) for a in axes))


# -- remat: which equations are the recomputation -------------------------------------------------------------------


def _remat_cost(body: jcore.Jaxpr) -> _Cost:
    """A differentiated checkpoint body: the cost of everything, with the recomputed prefix marked as such."""
    costs = [_eqn_cost(e, {}) for e in body.eqns]
    split = _recompute_mask(body, costs)
    total = _Cost(unresolved=int(split is None))
    for c, recompute in zip(costs, split or [False] * len(costs)):
        total.add(c, all_recompute=recompute)
    return total


def _var_inputs(eqn) -> list:
    return [v for v in eqn.invars if isinstance(v, jcore.Var)]


def _recompute_mask(body: jcore.Jaxpr, costs: list[_Cost]) -> Optional[list[bool]]:
    """True for equations not depending on the cotangent inputs, taken as the shortest suffix of the inputs for
    which no FLOP-bearing independent equation follows a FLOP-bearing dependent one (JAX's backward pass emits
    every recomputed equation before any transposed one; dependent means linear in a cotangent)."""
    invars = list(body.invars)
    for m in range(1, len(invars) + 1):
        tainted = set(invars[len(invars) - m:])
        mask, seen_dependent, valid = [], False, True
        for eqn, c in zip(body.eqns, costs):
            dependent = any(v in tainted for v in _var_inputs(eqn))
            if dependent:
                tainted.update(eqn.outvars)
            if c.executed > 0:
                if dependent:
                    seen_dependent = True
                elif seen_dependent:
                    valid = False
                    break
            mask.append(not dependent)
        if valid:
            return mask
    return None


def _barrier_fed(jaxpr: jcore.Jaxpr) -> dict:
    """id(eqn) -> whether it is fed only by `optimization_barrier` outputs (and constants): remat3's
    recomputation in a backward pass."""
    fed, constant, out = set(), set(), {}
    for eqn in jaxpr.eqns:
        ins = _var_inputs(eqn)
        barrier = eqn.primitive.name == "optimization_barrier"
        out[id(eqn)] = not barrier and bool(ins) and all(v in fed or v in constant for v in ins) and any(
            v in fed for v in ins)
        if barrier or out[id(eqn)]:
            fed.update(eqn.outvars)
        elif all(v in constant for v in ins):
            constant.update(eqn.outvars)
    return out


# -- while loops: trip counts of counter loops ---------------------------------------------------------------------

_FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "ne": "ne"}


def _value(atom, known: dict) -> Optional[int]:
    if isinstance(atom, jcore.Literal):
        v = np.asarray(atom.val)
        return int(v) if v.shape == () and np.issubdtype(v.dtype, np.integer) else None
    return known.get(atom)


def _propagate_constant(eqn, known: dict) -> None:
    """Integer scalars computed from literals in the same jaxpr (a loop's start or bound often is one)."""
    if len(eqn.outvars) != 1 or eqn.outvars[0].aval.shape != ():
        return
    vals = [_value(v, known) for v in eqn.invars]
    name = eqn.primitive.name
    if None in vals or not jax.dtypes.issubdtype(eqn.outvars[0].aval.dtype, np.integer):
        return
    if name == "convert_element_type":
        known[eqn.outvars[0]] = vals[0]
    elif name in ("add", "sub", "mul"):
        a, b = vals
        known[eqn.outvars[0]] = a + b if name == "add" else a - b if name == "sub" else a * b


def _while_trips(eqn, known: dict) -> Optional[int]:
    """Trips of a loop whose condition compares a counter (a carry moved by a constant step) with a constant;
    with other conditions and-ed in, the smallest such count is an upper bound (a decode loop that may stop
    at EOS is counted at its length limit)."""
    p = eqn.params
    cond, body = _open(p["cond_jaxpr"]), _open(p["body_jaxpr"])
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    init = eqn.invars[nc + nb:]

    def const(atom) -> Optional[int]:
        if not isinstance(atom, jcore.Var):
            return _value(atom, known)
        if atom not in cond.invars:
            return None
        i = cond.invars.index(atom)
        if i < nc:
            return _value(eqn.invars[i], known)
        passed_through = body.outvars[i - nc] is body.invars[nb + i - nc]  # fori_loop keeps its bound here
        return _value(init[i - nc], known) if passed_through else None

    def counter(atom) -> Optional[tuple[int, int]]:
        if not isinstance(atom, jcore.Var) or atom not in cond.invars[nc:]:
            return None
        k = cond.invars.index(atom) - nc
        start, step = _value(init[k], known), _counter_step(body, nb, k)
        return None if start is None or not step else (start, step)

    defs = {v: e for e in cond.eqns for v in e.outvars}
    trips, stack = [], [v for v in cond.outvars if isinstance(v, jcore.Var)]
    while stack:
        e = defs.get(stack.pop())
        if e is None:
            continue
        if e.primitive.name in ("and", "convert_element_type"):
            stack.extend(v for v in e.invars if isinstance(v, jcore.Var))
        elif e.primitive.name in _FLIP:
            (x, y), op = e.invars, e.primitive.name
            if counter(x) is None:
                x, y, op = y, x, _FLIP[op]
            c, bound = counter(x), const(y)
            n = None if c is None or bound is None else _trip_count(op, *c, bound)
            if n is not None:
                trips.append(n)
    return min(trips) if trips else None


def _trip_count(op: str, start: int, step: int, bound: int) -> Optional[int]:
    span = {"lt": bound - start, "le": bound - start + 1, "gt": start - bound, "ge": start - bound + 1}.get(op)
    if span is not None:
        toward = step if op in ("lt", "le") else -step
        return max(0, -(-span // toward)) if toward > 0 else None
    if op == "ne" and (bound - start) % step == 0 and (bound - start) // step >= 0:
        return (bound - start) // step
    return None


def _counter_step(body: jcore.Jaxpr, nb: int, k: int) -> Optional[int]:
    """The constant added to carry k on every trip, or None if carry k is not such a counter."""
    out, inp = body.outvars[k], body.invars[nb + k]
    e = next((e for e in body.eqns if any(o is out for o in e.outvars)), None)
    if e is None or e.primitive.name not in ("add", "sub"):
        return None
    x, y = e.invars
    if e.primitive.name == "add" and y is inp:
        x, y = y, x
    step = _value(y, {}) if x is inp else None
    return None if step is None else step if e.primitive.name == "add" else -step
