# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Model cards for trained CCF-LLM models, rendered with `huggingface_hub.ModelCard` from `model_cards/`."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .metrics import rela_impr

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "ccf_llama_card.md"


def render_model_card(
    results: dict, base_llm: str, dataset: str, cf_results: dict | None = None, cf_names=(), repo_id: str = "REPO_ID",
    template_path=CARD_TEMPLATE,
) -> ModelCard:  # fmt: skip
    """The card of a trained model from its `all_results.json` entries (and the CF backbone's, for RelaImpr)."""
    cf_auc = (cf_results or {}).get("test_auc")
    data = ModelCardData(
        library_name="peft",
        base_model=base_llm,
        pipeline_tag="text-classification",
        tags=["recommendation", "ctr-prediction", "ccf-llm", f"fusion-{results['fusion_mode']}"],
        license="apache-2.0",
        eval_results=None,
    )
    return ModelCard.from_template(
        data,
        template_path=str(template_path),
        model_name=f"CCF-LLM ({results['fusion_mode']}) on {dataset}",
        base_llm=base_llm,
        dataset=dataset,
        cf_names=list(cf_names),
        cf_test_auc=cf_auc,
        rela_impr=rela_impr(results["test_auc"], cf_auc) if cf_auc and "test_auc" in results else None,
        repo_id=repo_id,
        **results,
    )


__all__ = ["CARD_TEMPLATE", "render_model_card"]
