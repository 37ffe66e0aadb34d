"""LoRA tuning of the answering model on a knowledge base, and serving it with vLLM.

data.py builds retrieval-augmented training examples with the exact prompt `rag ask` uses,
train.py trains a peft LoRA adapter that vLLM can load, serve.py starts vLLM's OpenAI-compatible
server with the base model and adapters.  `rag tune data|train` and `rag serve` are cli/tune.py.
"""
