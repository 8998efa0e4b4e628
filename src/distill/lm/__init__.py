"""Language-model distillation (`task: language_model`): token-level KD for causal LMs.

Needs the optional extra `pip install 'distill[lm]'` (transformers). The pieces:
data.py (text/JSONL/pydoc rows with target masks), tokenizer.py (byte-level or a local
tokenizer), models.py (GPT-2/Llama from a config or a local folder), chunked.py (the loss
over counted tokens, chunk by chunk; logit_transform.py: soft-capped or scaled heads),
distiller.py (TokenPart, the Distiller's LM part), features.py (hidden-state terms on mapped
layers), offline.py (stored top-k teacher), on_policy.py (student-generated batches),
generation.py (`generate`: teacher-written completions for sequence-level KD),
cross_tokenizer.py (a teacher with its own tokenizer); the run's side is
distill.tasks.language_model.
"""

from .chunked import Head, TeacherRows, token_loss
from .distiller import TokenPart, evaluate_lm, lm_distiller
from .generation import generate

__all__ = ["Head", "TeacherRows", "TokenPart", "evaluate_lm", "generate", "lm_distiller", "token_loss"]
