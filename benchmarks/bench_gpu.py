"""GPU throughput of the generation and encoding stages against the machine's measured ceilings (issue 5),
plus the USE module, an encoder training step and IVF k-means (issue 12).

    python benchmarks/bench_gpu.py --json gpu.json          # on an H100/H200: realistic model sizes
    python benchmarks/bench_gpu.py --tiny                    # anywhere: the same code paths, tiny sizes

No Ray and no download: mBERT-base and mT5-base are built from their configs with random weights, inputs
are synthetic token ids with realistic lengths (passages 130-170 tokens cut to 128, queries 8-32). The
project's own stage classes (xdr.models.encoder.Encoder, xdr.models.generator.QueryGenerator) are measured, side by side
with the seed-style loop of the public xQG code (fp16 autocast, padded to the longest, batch 128, one
`generate` call per language). Prints a table; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdr.config import EncoderConfig, GeneratorConfig  # noqa: E402
from xdr.models.encoder import Encoder  # noqa: E402
from xdr.models.generator import QueryGenerator, sequence_key  # noqa: E402

LANGUAGES = ["ar", "bn", "fi", "ja", "ko", "ru", "te"]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - start) / repeat


def ceilings(device: torch.device, tiny: bool) -> dict:
    n = 1024 if tiny else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    matmul_s = timed(lambda: a @ b, repeat=3 if tiny else 20)
    size = (64 if tiny else 4096) * 2**20
    src, dst = torch.empty(size, dtype=torch.uint8, device=device), torch.empty(size, dtype=torch.uint8, device=device)
    copy_s = timed(lambda: dst.copy_(src), repeat=3 if tiny else 20)
    return {"matmul_tflops": 2 * n**3 / matmul_s / 1e12, "copy_gb_s": 2 * size / copy_s / 1e9, "dtype": str(dtype)}


def build_models(tiny: bool):
    from transformers import BertConfig, BertModel, MT5Config, MT5ForConditionalGeneration

    from xdr.models.tiny import build_tiny_models

    tokenizers = build_tiny_models(REPO / "bench-output" / "models")  # only their tokenizers are used here
    if tiny:
        bert = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=256)
        mt5 = MT5Config(vocab_size=2000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                        num_heads=4, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    else:
        bert = BertConfig(vocab_size=119_547, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072)
        mt5 = MT5Config(vocab_size=250_112, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                        num_heads=12, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    return BertModel(bert), MT5ForConditionalGeneration(mt5), tokenizers


def synthetic_ids(rng, n: int, low: int, high: int, cut: int, vocab: int) -> list[list[int]]:
    lengths = np.minimum(rng.integers(low, high + 1, size=n), cut)
    return [[101, *rng.integers(1000, vocab - 1, size=int(t) - 2).tolist(), 102] for t in lengths]


def encoder_flops(model, tokens: int) -> float:
    """2 x parameters (without embeddings) x tokens + attention (QK^T and AV: 4 x T^2 x d per layer)."""
    cfg = model.config
    params = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    return 2 * params * tokens + 4 * cfg.num_hidden_layers * tokens**2 * cfg.hidden_size


def generator_flops(model, input_tokens: int, new_tokens: int, sequences: int) -> float:
    """Per prompt: encoder once, decoder (self + cross attention, FFN, LM head) for every generated token
    of every returned sequence; attention over the KV cache counted at its average length."""
    cfg = model.config
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder.") and "embed" not in n)
    dec = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder.") and "embed" not in n)
    head = cfg.d_model * cfg.vocab_size
    encoder_part = 2 * enc * input_tokens + 4 * cfg.num_layers * input_tokens**2 * cfg.d_model
    per_token = 2 * (dec + head) + 4 * cfg.num_decoder_layers * cfg.d_model * (new_tokens / 2 + input_tokens)
    return encoder_part + sequences * new_tokens * per_token


def bench_encoder(model, tokenizer, device, ceiling_tflops, rng, tiny: bool) -> dict:
    n_pass, n_query = (128, 512) if tiny else (32_768, 131_072)
    passages = synthetic_ids(rng, n_pass, 130, 170, 128, model.config.vocab_size)
    queries = synthetic_ids(rng, n_query, 8, 32, 32, model.config.vocab_size)
    ours = Encoder(EncoderConfig(model="synthetic", batch_size=512 if not tiny else 64), device=str(device),
                   model=model, tokenizer=tokenizer)
    p_s, q_s = timed(lambda: ours.encode_ids(passages)), timed(lambda: ours.encode_ids(queries))
    p_flops = sum(encoder_flops(ours.model, len(t)) for t in passages)
    q_flops = sum(encoder_flops(ours.model, len(t)) for t in queries)

    def seed_loop(ids):  # the public code's way: fp16 autocast, padded to the longest, batch 128
        width = max(len(t) for t in ids)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            for i in range(0, len(ids), 128):
                chunk = ids[i: i + 128]
                x = torch.tensor([t + [0] * (width - len(t)) for t in chunk], device=device)
                ours.model.float()(input_ids=x, attention_mask=(x != 0).long()).last_hidden_state[:, 0].cpu()
    ref_model = ours.model
    seed_p_s = timed(lambda: seed_loop(passages))
    ours.model = ref_model.to(dtype=ours.dtype)
    # correctness: the fast path against an fp32 reference on the same weights
    fast = ours.encode_ids(passages[:64])
    ref = Encoder(EncoderConfig(model="synthetic", dtype="float32", batch_size=64), device=str(device),
                  model=_copy_fp32(model), tokenizer=tokenizer).encode_ids(passages[:64])
    rel = float(np.max(np.linalg.norm(fast - ref, axis=1) / np.linalg.norm(ref, axis=1)))
    return {"passages_per_s": n_pass / p_s, "queries_per_s": n_query / q_s,
            "passage_flop_fraction": p_flops / p_s / 1e12 / ceiling_tflops,
            "query_flop_fraction": q_flops / q_s / 1e12 / ceiling_tflops,
            "seed_loop_passages_per_s": n_pass / seed_p_s, "speedup_vs_seed_loop": seed_p_s / p_s,
            "max_relative_error_vs_fp32": rel, "dtype": str(ours.dtype)}


def _copy_fp32(model):
    import copy

    return copy.deepcopy(model).float()


def bench_generator(model, tokenizer, device, ceiling_tflops, rng, tiny: bool) -> dict:
    n_passages = 4 if tiny else 2048
    prompts = synthetic_ids(rng, n_passages * len(LANGUAGES), 130, 170, 128, model.config.vocab_size)
    keys = [[sequence_key(0, str(i), "x", q) for q in range(5)] for i in range(len(prompts))]
    results = {}
    # Random weights never stop on their own: every query runs to exactly `new_tokens` (min = max).
    for label, new_tokens in (("forced 32 tokens", 32), ("20 tokens (realistic average)", 20)):
        gen = QueryGenerator(GeneratorConfig(model="synthetic", languages=LANGUAGES, batch_size=32 if tiny else 256,
                                             max_new_tokens=new_tokens), device=str(device), model=model,
                             tokenizer=tokenizer)
        gen.generation_config.min_new_tokens = new_tokens
        outputs: list = []

        def run(gen=gen, outputs=outputs):
            outputs.append(gen.generate_ids(prompts, keys))

        seconds = timed(run)
        valid = all(len(texts) == 5 and all(isinstance(t, str) for t in texts) for texts in outputs[-1])
        flops = sum(generator_flops(gen.model, len(p), new_tokens, 5) for p in prompts)
        results[label] = {"passages_per_s": n_passages / seconds,
                          "flop_fraction": flops / seconds / 1e12 / ceiling_tflops, "outputs_valid": valid}

    def seed_loop():  # one generate call per language, batch 128, padded, fp16 autocast, HF top-k sampling
        per_lang = len(prompts) // len(LANGUAGES)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            for lang in range(len(LANGUAGES)):
                chunk_all = prompts[lang * per_lang: (lang + 1) * per_lang]
                for i in range(0, len(chunk_all), 128):
                    chunk = chunk_all[i: i + 128]
                    width = max(len(t) for t in chunk)
                    x = torch.tensor([t + [0] * (width - len(t)) for t in chunk], device=device)
                    model.float().generate(input_ids=x, attention_mask=(x != 0).long(), do_sample=True, top_k=10,
                                           num_return_sequences=5, max_new_tokens=32, min_new_tokens=32)
    seed_s = timed(seed_loop)
    results["seed_loop_passages_per_s"] = n_passages / seed_s
    results["speedup_vs_seed_loop"] = (results["forced 32 tokens"]["passages_per_s"]
                                       / results["seed_loop_passages_per_s"])
    return results


def bench_use(device, rng, tiny: bool) -> dict:
    """USE v3 as the PyTorch module (random weights of the real shapes: the package is not on the GPU
    machine), sentences of 8-40 tokens, fp32 and bf16 autocast."""
    from xdr.models.use_model import UseModel

    model = (UseModel(vocab_size=2000) if tiny else UseModel()).to(device).eval()
    n, batch = (256, 128) if tiny else (131_072, 4096)
    lengths = rng.integers(8, 41, size=n)
    ids = torch.zeros(n, 40, dtype=torch.int64)
    mask = torch.zeros(n, 40, dtype=torch.int64)
    for i, t in enumerate(lengths):
        ids[i, :t] = torch.from_numpy(rng.integers(1, model.embedding.num_embeddings, size=int(t)))
        mask[i, :t] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = {}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        @torch.no_grad()
        def run(dtype=dtype):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                for i in range(0, n, batch):
                    model(ids[i: i + batch], mask[i: i + batch])
        out[f"sentences_per_s_{label}"] = n / timed(run)
    return out


def bench_train_step(bert, tokenizer_dir: Path, device, rng, tiny: bool) -> dict:
    """One optimizer step of the encoder trainer (xdr.train: TrainableEncoder, train_step, the hybrid loss)
    on mBERT-base shapes: 64 queries (<= 32 tokens) and 64 positives + 64 hard negatives (128 tokens), bf16
    autocast on a GPU."""
    import tempfile

    from transformers import AutoTokenizer

    from xdr.train.data import Passage
    from xdr.train.loop import train_step
    from xdr.train.model import TrainableEncoder
    from xdr.train.samplers import TrainingExample

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    words = [w for w in tokenizer.get_vocab() if w.isalpha()][:5000]
    with tempfile.TemporaryDirectory() as folder:
        bert.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model = TrainableEncoder(folder, pooling="cls").to(device)
    queries, size, steps = (8, 2, 2) if tiny else (64, 64, 10)

    def text(n_words):
        return " ".join(rng.choice(words, size=n_words))

    batch = [TrainingExample(text(12), Passage("", text(100)), (Passage("", text(100)),), "en", "en",
                             "xy") for _ in range(queries)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    kwargs = {"recipe": "hybrid", "temperature": 0.05, "query_max_tokens": 32, "passage_max_tokens": 128}
    seconds = timed(lambda: [train_step(model, optimizer, None, batch, autocast_dtype=dtype, **kwargs)
                             for _ in range(steps)]) / steps
    return {"examples_per_s": queries / seconds, "step_s": seconds, "batch": queries, "passages_per_step": 2 * queries,
            "autocast": str(dtype)}


def bench_ivf(device, rng, tiny: bool) -> dict:
    """IVF coarse-quantizer training (k-means, 10 iterations): faiss-cpu on all cores against the PyTorch
    k-means of faiss.contrib (faiss' own loop, assignment by a matmul on the device)."""
    import faiss
    from faiss.contrib.clustering import kmeans
    from faiss.contrib.torch.clustering import DatasetAssign

    n, d, k = (20_000, 64, 64) if tiny else (1_000_000, 768, 4096)
    x = rng.standard_normal((n, d), dtype=np.float32)

    class MatmulAssign(DatasetAssign):  # nearest centroid by |x|^2 - 2 x.c + |c|^2, in chunks
        def perform_search(self, centroids):
            c_norm = (centroids ** 2).sum(1)
            dist, idx = [], []
            for i in range(0, self.x.shape[0], 65_536):
                chunk = self.x[i: i + 65_536]
                scores = (chunk ** 2).sum(1, keepdim=True) - 2 * chunk @ centroids.T + c_norm
                best = scores.min(1)
                dist.append(best.values)
                idx.append(best.indices)
            return torch.cat(dist)[:, None], torch.cat(idx)[:, None]

    start = time.perf_counter()
    cpu = faiss.Kmeans(d, k, niter=10, seed=1, verbose=False, max_points_per_centroid=n)
    cpu.train(x)
    cpu_s = time.perf_counter() - start
    data = MatmulAssign(torch.from_numpy(x).to(device))
    sync()
    start = time.perf_counter()
    centroids = kmeans(k, data, niter=10, seed=1, verbose=False)
    sync()
    torch_s = time.perf_counter() - start
    objective = lambda c: float(faiss.knn(x, np.ascontiguousarray(c, dtype=np.float32), 1)[0].mean())  # noqa: E731
    return {"vectors": n, "dim": d, "lists": k, "faiss_cpu_s": cpu_s, "torch_s": torch_s, "speedup": cpu_s / torch_s,
            "faiss_threads": faiss.omp_get_max_threads(), "mse_faiss_cpu": objective(cpu.centroids),
            "mse_torch": objective(torch.as_tensor(centroids).cpu().numpy())}


def bench_index_build(rng, tiny: bool) -> dict:
    """The build job's own calls (xdr.index.build, issue 21): train_index and the add's list assignment, on the CPU
    and, when this faiss has GPUs (the faiss-gpu-cu12 wheel carried instead of faiss-cpu), with use_gpu."""
    import faiss

    from xdr.index import build as xindex

    n, d, factory = (12_000, 64, "IVF64,PQ8np") if tiny else (1_000_000, 768, "IVF4096,PQ64np")
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    result = {"vectors": n, "dim": d, "factory": factory, "faiss_gpus": xindex.faiss_gpus(),
              "faiss_threads": faiss.omp_get_max_threads()}
    for device in ("cpu", "gpu") if result["faiss_gpus"] else ("cpu",):
        start = time.perf_counter()
        trained = xindex.train_index(factory, x[: 64 * 4096] if not tiny else x, seed=0, use_gpu=device == "gpu")
        result[f"train_s_{device}"] = time.perf_counter() - start
        index = xindex.from_bytes(xindex.to_bytes(trained))
        assigner = faiss.index_cpu_to_all_gpus(index.quantizer) if device == "gpu" else index.quantizer
        start = time.perf_counter()
        xindex.add_assigned(index, x, ids, assigner)
        result[f"add_s_{device}"] = time.perf_counter() - start
        result[f"adds_per_s_{device}"] = n / result[f"add_s_{device}"]
    return result


def bench_encoder_variants(model, tokenizer, device, rng, tiny: bool) -> dict:
    """Where the encoder's time goes: batch sizes, eager against SDPA attention, and the model alone on
    pre-padded device tensors (no tokenizer, no padding on the CPU, no copy back) as the stage's ceiling."""
    n_pass, n_query = (128, 512) if tiny else (32_768, 131_072)
    passages = synthetic_ids(rng, n_pass, 130, 170, 128, model.config.vocab_size)
    queries = synthetic_ids(rng, n_query, 8, 32, 32, model.config.vocab_size)
    out: dict = {"attention": model.config._attn_implementation}

    def rate(ids, batch):
        enc = Encoder(EncoderConfig(model="synthetic", batch_size=batch), device=str(device), model=model,
                      tokenizer=tokenizer)
        return len(ids) / timed(lambda: enc.encode_ids(ids))

    for batch in ((32, 64) if tiny else (256, 512, 1024)):
        out[f"passages_per_s_batch{batch}"] = rate(passages, batch)
    for batch in ((64, 256) if tiny else (512, 2048, 8192)):
        out[f"queries_per_s_batch{batch}"] = rate(queries, batch)
    model.set_attn_implementation("eager")
    try:
        out["passages_per_s_batch512_eager"] = rate(passages, 64 if tiny else 512)
    finally:
        model.set_attn_implementation(out["attention"])
    dtype = next(model.parameters()).dtype
    for label, width, batch in (("passages", 128, 64 if tiny else 512), ("queries", 20, 256 if tiny else 2048)):
        x = torch.randint(1000, model.config.vocab_size - 1, (batch, width), device=device)
        mask = torch.ones_like(x)

        @torch.inference_mode()
        def forward(x=x, mask=mask):
            for _ in range(4):
                model(input_ids=x, attention_mask=mask)
        out[f"model_only_{label}_per_s"] = 4 * batch / timed(forward, repeat=3)
    out["dtype"] = str(dtype)
    return out


def bench_generator_variants(model, tokenizer, device, rng, tiny: bool) -> dict:
    """Where the generator's time goes: prompts per call, and the keyed sampler against HF's own top-k."""
    n_passages = 2 if tiny else 512
    prompts = synthetic_ids(rng, n_passages * len(LANGUAGES), 130, 170, 128, model.config.vocab_size)
    keys = [[sequence_key(0, str(i), "x", q) for q in range(5)] for i in range(len(prompts))]
    out: dict = {"attention": model.config._attn_implementation}

    def make(batch):
        gen = QueryGenerator(GeneratorConfig(model="synthetic", languages=LANGUAGES, batch_size=batch,
                                             max_new_tokens=20), device=str(device), model=model, tokenizer=tokenizer)
        gen.generation_config.min_new_tokens = 20
        return gen

    for batch in ((4, 8) if tiny else (128, 256, 512)):
        gen = make(batch)
        out[f"passages_per_s_batch{batch}"] = n_passages / timed(lambda gen=gen: gen.generate_ids(prompts, keys))
    gen = make(4 if tiny else 256)
    hf_config = gen.generation_config.__class__(**{**gen.generation_config.to_dict(), "top_k": 10})
    width = max(len(t) for t in prompts[: gen.config.batch_size])
    x = torch.tensor([t + [0] * (width - len(t)) for t in prompts[: gen.config.batch_size]], device=device)

    @torch.inference_mode()
    def hf_topk():
        model.generate(input_ids=x, attention_mask=(x != 0).long(), generation_config=hf_config)

    @torch.inference_mode()
    def keyed():
        gen.sampler.row_keys = torch.as_tensor(np.asarray(keys[: len(x)]).reshape(-1), device=device)
        from transformers import LogitsProcessorList
        model.generate(input_ids=x, attention_mask=(x != 0).long(), generation_config=gen.generation_config,
                       logits_processor=LogitsProcessorList([gen.sampler]))
    out["one_call_keyed_sampler_s"] = timed(keyed, repeat=2)
    out["one_call_hf_topk_s"] = timed(hf_topk, repeat=2)
    out["one_call_prompts"] = len(x)
    return out


def profile_top_ops(fn, rows: int = 12) -> str:
    """The CUDA (or CPU) operators that take the most time in one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
        sync()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models and inputs: checks the script anywhere")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", nargs="*", help="run these sections only (default: all)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    report: dict = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "tiny": args.tiny,
                    "errors": {}, "seconds": {}}

    def section(key: str, fn):
        """Runs one part; a failure is recorded and the others still run. The JSON is rewritten after each."""
        if args.only and key not in args.only:
            return None
        print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
        start = time.perf_counter()
        try:
            report[key] = fn()
        except Exception as err:  # noqa: BLE001 - a benchmark run keeps the other sections' figures
            import traceback

            traceback.print_exc()
            report["errors"][key] = f"{type(err).__name__}: {err}"
        report["seconds"][key] = time.perf_counter() - start
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
        return report.get(key)

    ceiling = section("ceilings", lambda: ceilings(device, args.tiny))
    tflops = ceiling["matmul_tflops"]
    bert, mt5, tokenizers = build_models(args.tiny)
    from transformers import AutoTokenizer

    enc_tok, gen_tok = (AutoTokenizer.from_pretrained(tokenizers[k]) for k in ("encoder", "generator"))
    enc = section("encoder", lambda: bench_encoder(bert, enc_tok, device, tflops, rng, args.tiny))
    section("encoder_variants", lambda: bench_encoder_variants(bert.to(device), enc_tok, device, rng, args.tiny))
    gen = section("generator", lambda: bench_generator(mt5, gen_tok, device, tflops, rng, args.tiny))
    section("generator_variants", lambda: bench_generator_variants(mt5.to(device), gen_tok, device, rng, args.tiny))

    def profiles():
        ids = synthetic_ids(rng, 128 if args.tiny else 512, 130, 170, 128, bert.config.vocab_size)
        enc_stage = Encoder(EncoderConfig(model="synthetic", batch_size=512), device=str(device), model=bert,
                            tokenizer=enc_tok)
        prompts = synthetic_ids(rng, 16 if args.tiny else 256, 130, 170, 128, mt5.config.vocab_size)
        keys = [[sequence_key(0, str(i), "x", q) for q in range(5)] for i in range(len(prompts))]
        gen_stage = QueryGenerator(GeneratorConfig(model="synthetic", languages=LANGUAGES, batch_size=len(prompts),
                                                   max_new_tokens=20), device=str(device), model=mt5, tokenizer=gen_tok)
        tables = {"encoder_512_passages": profile_top_ops(lambda: enc_stage.encode_ids(ids)),
                  "generator_one_call": profile_top_ops(lambda: gen_stage.generate_ids(prompts, keys))}
        for label, table in tables.items():
            print(f"--- profile: {label}\n{table}", flush=True)
        return tables
    section("profiles", profiles)
    use = section("use", lambda: bench_use(device, rng, args.tiny))
    train = section("train_step", lambda: bench_train_step(bert.float(), tokenizers["encoder"], device, rng,
                                                           args.tiny))
    ivf = section("ivf_training", lambda: bench_ivf(device, rng, args.tiny))
    build = section("index_build", lambda: bench_index_build(rng, args.tiny))

    print(f"\ndevice: {name}; torch {torch.__version__}; date {report['date']}; tiny={args.tiny}")
    print(f"ceilings: matmul {tflops:.1f} TFLOP/s ({ceiling['dtype']}), copy {ceiling['copy_gb_s']:.0f} GB/s")
    if enc:
        print(f"encoder ({enc['dtype']}): {enc['passages_per_s']:,.0f} passages/s at 128 tokens "
              f"({enc['passage_flop_fraction']:.1%} of the matmul ceiling), {enc['queries_per_s']:,.0f} queries/s "
              f"at <=32 ({enc['query_flop_fraction']:.1%}); seed-style loop {enc['seed_loop_passages_per_s']:,.0f} "
              f"passages/s (ours x{enc['speedup_vs_seed_loop']:.2f}); "
              f"max relative error vs fp32 {enc['max_relative_error_vs_fp32']:.2e}")
    if gen:
        for label in ("forced 32 tokens", "20 tokens (realistic average)"):
            r = gen[label]
            print(f"generator, 7 languages x 5 queries, {label}: {r['passages_per_s']:,.1f} passages/s "
                  f"({r['flop_fraction']:.1%} of the ceiling); outputs valid: {r['outputs_valid']}")
        print(f"generator seed-style loop (32 tokens): {gen['seed_loop_passages_per_s']:,.1f} passages/s "
              f"(ours x{gen['speedup_vs_seed_loop']:.2f})")
    for key in ("encoder_variants", "generator_variants"):
        if key in report:
            print(f"{key}: " + ", ".join(f"{k} {v:,.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in report[key].items()))
    if use:
        print(f"USE v3 (PyTorch module): {use['sentences_per_s_fp32']:,.0f} sentences/s fp32, "
              f"{use['sentences_per_s_bf16']:,.0f} bf16 (8-40 tokens)")
    if train:
        print(f"encoder training step ({train['autocast']} autocast): {train['examples_per_s']:,.1f} examples/s "
              f"({train['batch']} queries + {train['passages_per_step']} passages per step)")
    if ivf:
        print(f"IVF k-means {ivf['vectors']:,} x {ivf['dim']} -> {ivf['lists']} lists, 10 iterations: faiss-cpu "
              f"{ivf['faiss_cpu_s']:.1f}s ({ivf['faiss_threads']} threads), PyTorch on {device.type} "
              f"{ivf['torch_s']:.1f}s (x{ivf['speedup']:.1f}); mean squared distance {ivf['mse_faiss_cpu']:.4f} vs "
              f"{ivf['mse_torch']:.4f}")
    if build:
        print(f"index build ({build['factory']}, {build['vectors']:,} x {build['dim']}; faiss GPUs "
              f"{build['faiss_gpus']}): " + ", ".join(f"{k} {v:,.2f}" for k, v in build.items()
                                                      if k.startswith(("train_s", "add_s", "adds_per_s"))))
    for key, err in report["errors"].items():
        print(f"FAILED {key}: {err}")
    if report["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
