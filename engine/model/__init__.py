"""The Whisper network as Flax NNX modules (device side): `config` (dimensions of every official
checkpoint), `whisper` (encoder, decoder, `Whisper`), `layers` (attention, MLP, blocks),
`attention_kernels` (the attention computation, chosen by an explicit model setting),
`kv_cache`, `quantize` (int8 weights) and `flops` (FLOP counts per window)."""
