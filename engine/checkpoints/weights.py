"""A `Checkpoint`'s arrays onto devices as a (sharded) NNX `Whisper`, and back.

`load_model` places each weight straight into its sharding (each process builds only the shards
its devices own); `param_shardings` is the rule set applied to the model's logical axes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from whisper_nnx.sharding import fit_spec
from whisper_nnx.sharding.checks import Replicated, check_sufficiently_sharded, nbytes

from ..model.whisper import Whisper
from .names import EMBEDDING, Checkpoint, check_params, flatten_tree, pad_vocab, unflatten_tree


def load_model(checkpoint: Checkpoint, *, dtype=jnp.float32, param_dtype=jnp.float32,
               mesh: Optional[jax.sharding.Mesh] = None, rules=None,
               allow_replicated: bool = False, attention_kernel: Optional[str] = None,
               encoder_rows: Optional[int] = None) -> Whisper:
    """Place the checkpoint's weights straight into their shardings and return the model.

    Without a mesh, every weight goes to the default device. With one, each process builds
    only the shards its devices own (`make_array_from_callback` over memory-mapped arrays), so
    no device ever holds a full copy of a weight that the rules split. A weight of 1 MiB or
    more that the mesh cannot split raises `ShardingError` unless `allow_replicated`.
    `attention_kernel`, `encoder_rows`: the encoder's attention kernel and windows per encoder
    call, as in `Whisper` (None: the defaults).
    """
    with nnx.use_eager_sharding(False):
        graphdef, abstract = nnx.split(Whisper(checkpoint.dims, dtype=dtype, param_dtype=param_dtype,
                                               rngs=None, attention_kernel=attention_kernel,
                                               encoder_rows=encoder_rows))
    check_params(checkpoint.dims, checkpoint.params)
    shardings: dict = {}
    if mesh is not None:
        nested_shardings, replicated = param_shardings(abstract, mesh, rules)
        if not allow_replicated:
            check_sufficiently_sharded(replicated)
        shardings = dict(flatten_tree(nested_shardings))

    def place(path: str, array: np.ndarray) -> jax.Array:
        array = pad_vocab(path, array, checkpoint.dims)
        if mesh is None:
            return jax.device_put(np.asarray(array).astype(param_dtype))  # jnp.asarray compiles a program per shape
        return jax.make_array_from_callback(
            array.shape, shardings[path], lambda index: np.asarray(array[index]).astype(param_dtype))

    arrays = unflatten_tree({path: place(path, array) for path, array in checkpoint.params.items()})
    nnx.replace_by_pure_dict(abstract, arrays)
    return nnx.merge(graphdef, abstract)


def param_shardings(abstract_state, mesh: jax.sharding.Mesh, rules) -> tuple[dict, list[Replicated]]:
    """Nested dict of NamedShardings for the parameters under `rules` on `mesh`, and the
    weights that had to be replicated on some dim the rules split (6 heads over a 4-way
    `model` axis): those dims are replicated instead, and reported."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules or ()):
        specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
    leaves = dict(flatten_tree(nnx.to_pure_dict(abstract_state)))
    fitted, replicated = {}, []
    for path, spec in flatten_tree(specs):
        shape = tuple(leaves[path].shape)
        spec, dropped = fit_spec(spec, shape, mesh)
        if dropped:
            logging.warning("%s %s: dims %s not divisible by their mesh axes; replicated", path, shape, dropped)
            replicated.append(Replicated(path, shape, nbytes(shape, leaves[path].dtype.itemsize), tuple(dropped)))
        fitted[path] = jax.sharding.NamedSharding(mesh, spec)
    return unflatten_tree(fitted), replicated


def model_params(model: Whisper) -> dict[str, np.ndarray]:
    """Our path -> host array of every parameter of a live model, in checkpoint shapes."""
    params = {path: np.asarray(leaf) for path, leaf in flatten_tree(nnx.to_pure_dict(nnx.state(model)))}
    params[EMBEDDING] = params[EMBEDDING][:model.dims.n_vocab]
    return params
