"""A batch of 30 s windows to tokens: `tokenizer`, `logit_rules` (the reference's rules per
step), `search` (beam bookkeeping), `strategies` (greedy, sampling, beam search as objects),
`programs` (the pure jitted encode / prefill / `lax.while_loop` programs), `generate` (the host
runner: placement, fetch, shrinking), `window_decoder` (prompts, temperature fallback, ranking)
and `alignment` (cross-attention alignment for word timestamps)."""
