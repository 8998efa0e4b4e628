"""`task: text_classification`: a transformer teacher (BERT-style) into a smaller student.

A text classifier is a classifier whose inputs are token ids (distill.text): the data, the
models (Hugging Face sequence classifiers behind `text.models.TextClassifier`) and the
layer maps of the transformer terms are this task's; the Distiller, the teacher cache, the
evaluation, the run folder, reports and exports are the classification task's, unchanged.
"""

from __future__ import annotations

from pathlib import Path

from ..classifier_run import build_classifier_data
from ..data import Data
from ..errors import ConfigError
from ..export import export as export_classifier
from ..losses.transformer import MapsLayers
from ..terms import build_terms
from ..trust import NO_TRUST, Trust
from .classification import ClassificationTask


class TextClassificationTask(ClassificationTask):
    name = "text_classification"

    def __init__(self, cfg, trust_checkpoint: bool = False):
        super().__init__(cfg, trust_checkpoint)
        from ..models.hf import transformers_module  # transformers: for text runs only

        transformers_module()  # a clear error now if the extra is not installed

    def build_data(self, seed: int) -> Data:
        return build_classifier_data(self.cfg, seed)

    def build_terms(self) -> tuple[dict, float]:
        """The terms, with every layer map ("uniform", "last" or explicit pairs) resolved
        against the two models' depths, read from their configs."""
        terms, ce_weight = build_terms(self.cfg)
        mapped = {name: term for name, (term, _) in terms.items() if isinstance(term, MapsLayers)}
        if mapped:
            from ..text.models import model_depth

            depths = model_depth(self.cfg.student), model_depth(self.cfg.teacher)
            if 0 in depths:  # not a text model: create_text_model says what is wrong with it
                return terms, ce_weight
            for name, term in mapped.items():
                try:
                    term.map_layers(*depths)
                except ValueError as e:
                    raise ConfigError(f"loss.{name}: {e}") from None
        return terms, ce_weight

    def describe(self, data: Data) -> list[str]:
        lines = super().describe(data)
        s = data.stats
        lines.insert(1, f"Text: {s['max_length']} tokens per row, tokenizer {self.cfg.data.tokenizer} "
                        f"({s['vocab_size']} ids); classes: {', '.join(data.class_names)}.")
        return lines

    def data_summary(self, data: Data) -> dict:
        from ..text.export import text_record

        return {**super().data_summary(data), "preprocess": text_record(self.cfg, data)[0]}

    def export(self, run_dir: Path, fmt: str, out: Path | None = None, stage: str = "distill",
               trust: Trust = NO_TRUST, quantize: str | None = None) -> dict:
        """An export folder whose graph takes (input_ids, attention_mask), with the tokenizer's
        settings (and a Hugging Face tokenizer's tokenizer.json) beside it (distill.text.export)."""
        from ..text.export import text_bundle

        return export_classifier(run_dir, fmt, out, stage, trust, quantize, bundle=text_bundle, task=self.name)
