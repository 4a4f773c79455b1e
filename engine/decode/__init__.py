"""A batch of 30 s windows to tokens: `tokenizer`, `logit_rules` (the reference's rules per
step), `search` (beam bookkeeping), `strategies` (greedy, sampling, beam search as objects),
`programs` (the pure jitted encode / prefill / `lax.while_loop` programs), `generate` (the host
runner: placement, fetch, shrinking), `prompts` (a window's prompt, a batch's padded prompts),
`window_decoder` (batches, temperature fallback, ranking) and `alignment` (cross-attention
alignment for word timestamps)."""
