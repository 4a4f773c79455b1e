"""Decoding strategies: which one a window gets, their static-argument contract, and their
token choice and host-side candidates against hand computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whisper_nnx.engine.decode.options import DecodeOptions
from whisper_nnx.engine.decode.programs import DecodeResult
from whisper_nnx.engine.decode.strategies import BeamSearch, Greedy, Sampling
from whisper_nnx.engine.decode.window_decoder import strategy_for


@pytest.mark.parametrize("options,temperature,expected", [
    (DecodeOptions(), 0.0, Greedy()),
    (DecodeOptions(), 0.4, Sampling(best_of=5)),
    (DecodeOptions.from_kwargs(best_of=None), 0.4, Sampling(best_of=1)),
    (DecodeOptions.from_kwargs(beam_size=3, patience=2.0), 0.0, BeamSearch(beam_size=3, patience=2.0)),
    (DecodeOptions.from_kwargs(beam_size=3), 0.0, BeamSearch(beam_size=3, patience=1.0)),
    (DecodeOptions.from_kwargs(beam_size=3), 0.2, Sampling(best_of=5)),  # the reference samples above 0
])
def test_strategy_for_picks_as_the_reference(options, temperature, expected):
    assert strategy_for(options, temperature) == expected


def test_strategies_are_static_arguments():
    assert hash(Sampling(best_of=2)) == hash(Sampling(best_of=2)) and Sampling(2) != Sampling(3)
    assert Greedy() != Sampling(best_of=1)  # same copies, different programs
    assert (Greedy().copies, Sampling(best_of=4).copies, BeamSearch(beam_size=4).copies) == (1, 4, 1)
    assert BeamSearch(beam_size=4, patience=1.5).max_candidates == 6
    assert Greedy().shrinkable and Sampling().shrinkable and not BeamSearch().shrinkable


def test_greedy_chooses_the_argmax_and_sampling_follows_each_rows_seed():
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((4, 50)).astype(np.float32))
    key, seeds = jax.random.PRNGKey(1), jnp.asarray([5, 9, 2, 7], jnp.int32)
    np.testing.assert_array_equal(Greedy().choose(logits, 1.0, key, seeds), np.argmax(logits, axis=-1))
    drawn = Sampling().choose(logits, jnp.float32(0.7), key, seeds)
    alone = Sampling().choose(logits[2:3], jnp.float32(0.7), key, seeds[2:3])
    assert int(drawn[2]) == int(alone[0])  # a row draws the same token in any batch position
    # Near zero temperature a draw is the argmax.
    np.testing.assert_array_equal(Sampling().choose(logits, jnp.float32(1e-4), key, seeds),
                                  np.argmax(logits, axis=-1))


def test_token_candidates_group_the_copies_of_each_window():
    eot, begin = 9, 2
    tokens = np.array([[1, 2, 3, 4, eot], [1, 2, 5, eot, eot], [1, 2, eot, eot, eot], [1, 2, 6, 7, 8]])
    result = DecodeResult(tokens, np.array([-1.0, -2.0, -3.0, -4.0], np.float32), np.zeros(4, np.float32))
    got = Sampling(best_of=2).candidates(result, 2, begin, eot)
    assert got == [[([3, 4], -1.0), ([5], -2.0)], [([], -3.0), ([6, 7, 8], -4.0)]]
    assert Greedy().candidates(result, 2, begin, eot) == [[([3, 4], -1.0)], [([5], -2.0)]]
