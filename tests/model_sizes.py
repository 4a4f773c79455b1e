"""The parameter count of a Whisper model, worked out by hand from its dims (one place for the
tests that check counts: test_model.py, test_checkpoint_params.py, test_checkpoint_ct2.py)."""

from __future__ import annotations

from whisper_nnx.engine.model.config import ModelDims


def parameter_count(d: ModelDims) -> int:
    """Parameters of a Whisper model from its dims (the key projections have no bias; the fixed
    encoder position table is counted, as the published sizes count it)."""
    def attention(w):  # q, k, v, out kernels; q, v, out biases
        return 4 * w * w + 3 * w

    def mlp(w):  # fc1 (w -> 4w) and fc2 (4w -> w), with biases
        return 2 * 4 * w * w + 4 * w + w

    def norm(w):
        return 2 * w

    a, t = d.n_audio_state, d.n_text_state
    encoder = (3 * d.n_mels * a + a + 3 * a * a + a + d.n_audio_ctx * a
               + d.n_audio_layer * (attention(a) + mlp(a) + 2 * norm(a)) + norm(a))
    decoder = (d.n_vocab * t + d.n_text_ctx * t
               + d.n_text_layer * (2 * attention(t) + mlp(t) + 3 * norm(t)) + norm(t))
    return encoder + decoder
