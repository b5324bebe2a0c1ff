"""Smoke run of CCF-LLM on the real default backbone (SmolLM2-135M-Instruct), fully offline.

Finds the backbone (converted-model cache → Hub → the GGUF build, see `ccf_llm.pretrained_llm`), wraps it as
`CCFLlamaForCTR` with random CF embeddings in every fusion mode, and scores two hybrid prompts with each.
Untrained models: the scores show the plumbing works, not recommendation quality.

    python examples/smoke.py [--llm NAME_OR_PATH]
"""

import argparse
import time

import torch

from ccf_llm import DEFAULT_LLM, FUSION_MODES, CCFLlamaForCTR, CCFLlamaProcessor, load_llm

TITLES = {
    1: "Toy Story (1995)",
    2: "Heat (1995)",
    3: "Casino (1995)",
    4: "Jumanji (1995)",
    5: "Sabrina (1995)",
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm", default=DEFAULT_LLM, help="Hub id or local folder of the backbone LLM")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    llm, tokenizer = load_llm(args.llm)
    print(
        f"loaded {args.llm} ({sum(p.numel() for p in llm.parameters()) / 1e6:.1f}M parameters) "
        f"in {time.perf_counter() - start:.1f}s"
    )
    users, items = torch.randn(3, 128), torch.randn(6, 128)
    print(f"{'mode':<11} {'score row 0':>11} {'score row 1':>11} {'p_yes+p_no':>10} {'fwd+bwd s':>9}")
    for mode in FUSION_MODES:
        cf = {} if mode == "text" else {"user_embeddings": users, "item_embeddings": items}
        model = CCFLlamaForCTR.from_llm(llm, tokenizer, 2, 5, fusion_mode=mode, zero_init_gate=False, **cf)
        processor = CCFLlamaProcessor(tokenizer, TITLES, fusion_mode=mode)
        batch = processor([1, 2], [[1, 2], [4]], [3, 5], labels=[1, 0])
        start = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        seconds = time.perf_counter() - start
        mass = (out.p_yes + out.p_no).min().item()
        print(
            f"{mode:<11} {out.scores[0].item():>11.4f} {out.scores[1].item():>11.4f} {mass:>10.3f} {seconds:>9.2f}"
        )
    print("smoke run OK")


if __name__ == "__main__":
    main()
