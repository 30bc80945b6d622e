"""Near-duplicate content: accuracy and speed against datasketch, measured in one run.

    python -m bench.minhash [--speed-texts 20000] [--repeats 3] [--seed 0]

Data: the real UCI SMS Spam Collection (de-duplicated) plus synthetic campaigns: every distinct spam
text is a template sent 5-25 times with mutations a campaign uses to dodge exact matching (see
``mutate``). Ham stays as it is.

Accuracy: exact Jaccard of ``detector.content.shingles`` over all pairs (sparse products); a pair is
a near duplicate at J >= 0.5. Recall of those pairs for:
- ``pair_recall``: our campaign clusters (``ContentClusters`` with its defaults: fast scheme,
  64 values, LSH bands for threshold 0.5, merges), both messages in the same cluster once the
  stream is done (``ContentClusters.roots``); ``pair_recall_at_arrival`` uses the cluster ids
  returned when each message arrived;
- ``lsh_candidate_pair_recall``: the pair shares at least one of our band keys (plain LSH);
- ``datasketch_lsh_pair_recall``: datasketch ``MinHashLSH(threshold=0.5, num_perm=64)`` over
  datasketch ``MinHash`` of the same shingles, candidate pairs from ``query`` (and with 128).

Speed, SMS-length texts, best of ``--repeats`` interleaved runs, one thread: datasketch's
``MinHash.bulk`` (affine32 and legacy, num_perm=128) on pre-computed shingle lists (its shingling
is not timed), against ours from Python strings (``signatures``: normalisation, shingles, SHA-1 or
fast hashing all timed), and the detector's whole content stage (``ContentClusters.assign``:
strings to cluster ids and window statistics, a fresh default state, batches of 10,000). Wall-clock
rates go to the JSON line; rates per CPU second are printed too (the machine may be shared).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import string
import time

import numpy as np

from detector.content import ContentClusters, shingles, signatures
from detector.simulator import DEFAULT_SMS_PATH

THRESHOLD = 0.5
NAMES = ["John", "Sarah", "Mike", "Emma", "Raj", "Chloe", "Tom", "Aisha", "Luca", "Mia"]
LEET = {"o": "0", "i": "1", "e": "3", "a": "4", "s": "5"}


def load_sms() -> tuple[list[str], list[str]]:
    ham: dict[str, None] = {}
    spam: dict[str, None] = {}
    with open(DEFAULT_SMS_PATH, encoding="utf-8") as f:
        for line in f:
            label, text = line.rstrip("\n").split("\t", 1)
            (spam if label == "spam" else ham)[text] = None
    return list(ham), list(spam)


def mutate(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """One copy of a campaign template.

    Always: digits re-drawn (phone numbers, prices, codes differ per copy). Then 0-8 edits (0: 20%,
    1-2: 40%, 3-5: 30%, 6-8: 10%), each one of: delete a word, insert a word, replace a word, swap
    two neighbours, a typo (letter replaced, inserted or dropped), leetspeak in a word, a
    zero-width space inside a word, upper-casing a word, a personal greeting in front, a random
    short URL appended."""
    text = "".join(rng.choice(string.digits) if c.isdigit() else c for c in text)
    words = text.split()
    n_edits = rng.choices([0, 1, 2, 3, 4, 5, 6, 7, 8], [20, 25, 15, 12, 10, 8, 4, 3, 3])[0]
    for _ in range(n_edits):
        op = rng.randrange(10)
        i = rng.randrange(len(words)) if words else 0
        if op == 0 and len(words) > 1:
            del words[i]
        elif op == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(vocabulary))
        elif op == 2 and words:
            words[i] = rng.choice(vocabulary)
        elif op == 3 and len(words) > 1:
            j = min(i + 1, len(words) - 1)
            words[i], words[j] = words[j], words[i]
        elif op == 4 and words and words[i]:
            w = words[i]
            k = rng.randrange(len(w))
            edit = rng.randrange(3)
            letter = rng.choice(string.ascii_lowercase)
            words[i] = (
                w[:k] + letter + w[k + 1 :]
                if edit == 0
                else (w[:k] + letter + w[k:] if edit == 1 else w[:k] + w[k + 1 :])
            )
        elif op == 5 and words:
            words[i] = "".join(LEET.get(c, c) for c in words[i])
        elif op == 6 and words and len(words[i]) > 1:
            k = rng.randrange(1, len(words[i]))
            words[i] = words[i][:k] + "\u200b" + words[i][k:]
        elif op == 7 and words:
            words[i] = words[i].upper()
        elif op == 8:
            words.insert(0, f"{rng.choice(['Hi', 'Dear', 'Hey'])} {rng.choice(NAMES)},")
        elif op == 9:
            slug = "".join(rng.choices(string.ascii_letters + string.digits, k=6))
            words.append(f"{rng.choice(['bit.ly', 'tinyurl.com', 'www.win-now.co.uk'])}/{slug}")
    return " ".join(words)


def build_corpus(seed: int) -> tuple[list[str], np.ndarray]:
    """(texts in random order, campaign index per text or -1 for ham)."""
    rng = random.Random(seed)
    ham, spam = load_sms()
    vocabulary = " ".join(ham).split()
    items: list[tuple[str, int]] = [(t, -1) for t in ham]
    for c, template in enumerate(spam):
        for _ in range(rng.randrange(5, 26)):
            items.append((mutate(template, rng, vocabulary), c))
    rng.shuffle(items)
    return [t for t, _ in items], np.array([c for _, c in items], dtype=np.int64)


def exact_pairs(shingle_sets: list[list[bytes]], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with Jaccard >= threshold, exactly, and their Jaccard."""
    import scipy.sparse as sp  # a dependency of datasketch

    vocabulary: dict[bytes, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for i, sh in enumerate(shingle_sets):
        for s in sh:
            rows.append(i)
            cols.append(vocabulary.setdefault(s, len(vocabulary)))
    n = len(shingle_sets)
    x = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(n, len(vocabulary))
    )
    sizes = np.diff(x.indptr)
    xt = x.T.tocsc()
    pairs, values = [], []
    for start in range(0, n, 2000):
        inter = (x[start : start + 2000] @ xt).tocoo()
        i = inter.row.astype(np.int64) + start
        j = inter.col.astype(np.int64)
        keep = i < j
        i, j, v = i[keep], j[keep], inter.data[keep]
        jac = v / (sizes[i] + sizes[j] - v)
        keep = jac >= threshold
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
        values.append(jac[keep])
    return np.concatenate(pairs), np.concatenate(values)


def same(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return labels[pairs[:, 0]] == labels[pairs[:, 1]]


def datasketch_recall(shingle_sets, pairs, num_perm: int) -> float:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=num_perm)
    minhashes = MinHash.bulk(shingle_sets, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(minhashes):
            session.insert(i, m)
    candidates = set()
    for i, m in enumerate(minhashes):
        for j in lsh.query(m):
            if i < j:
                candidates.add((i, j))
    return float(np.mean([(int(a), int(b)) in candidates for a, b in pairs]))


def accuracy(texts: list[str], campaign: np.ndarray) -> dict:
    shingle_sets = [shingles(t) for t in texts]
    pairs, jac = exact_pairs(shingle_sets, THRESHOLD)
    n = len(texts)
    clusters = ContentClusters()
    features = clusters.assign(
        np.arange(n, dtype=np.int64) * 100,  # one message per 100 ms: all inside the window
        np.arange(1, n + 1, dtype=np.uint64),
        np.arange(n + 1, 2 * n + 1, dtype=np.uint64),
        np.full(n, 4, dtype=np.uint16),
        texts,
    )
    at_arrival = features.cluster_id
    final = clusters.roots(at_arrival)
    keys, _, _ = clusters.band_keys_of(texts)
    candidate = np.zeros(len(pairs), dtype=bool)
    for band in range(keys.shape[1]):
        candidate |= keys[pairs[:, 0], band] == keys[pairs[:, 1], band]
    # How pure are the clusters: Jaccard of random pairs inside a cluster.
    rng = np.random.default_rng(0)
    order = np.argsort(final, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(final[order]) != 0])
    sizes = np.diff(np.r_[starts, n])
    inside = []
    for s, size in zip(starts, sizes, strict=True):
        if size > 1 and final[order[s]] >= 0:
            for _ in range(min(size, 20)):
                a, b = rng.choice(order[s : s + size], 2, replace=False)
                sa, sb = set(shingle_sets[a]), set(shingle_sets[b])
                inside.append(len(sa & sb) / len(sa | sb))
    inside = np.array(inside)
    found = same(final, pairs)
    buckets = [0.5, 0.6, 0.7, 0.8, 0.9, 1.01]
    by_bucket = {
        f"[{lo:.1f},{min(hi, 1.0):.1f}{']' if hi > 1 else ')'}": (
            int(np.count_nonzero((jac >= lo) & (jac < hi))),
            float(found[(jac >= lo) & (jac < hi)].mean())
            if np.any((jac >= lo) & (jac < hi))
            else 1.0,
        )
        for lo, hi in itertools.pairwise(buckets)
    }
    campaign_pairs = campaign[pairs[:, 0]] >= 0
    return {
        "texts": n,
        "pairs": len(pairs),
        "pairs_within_campaigns": int(np.count_nonzero(campaign_pairs & same(campaign, pairs))),
        "pair_jaccard_quartiles": [round(float(q), 3) for q in np.quantile(jac, [0.25, 0.5, 0.75])],
        "pair_recall": float(found.mean()),
        "pair_recall_at_arrival": float(same(at_arrival, pairs).mean()),
        "lsh_candidate_pair_recall": float(candidate.mean()),
        "datasketch_lsh_pair_recall": datasketch_recall(shingle_sets, pairs, 64),
        "datasketch_lsh128_pair_recall": datasketch_recall(shingle_sets, pairs, 128),
        "recall_by_jaccard": by_bucket,
        "in_cluster_pair_jaccard_median": float(np.median(inside)),
        "in_cluster_pairs_below_0.3": float(np.mean(inside < 0.3)),
        "clusters": len(set(final.tolist())),
        "largest_cluster": int(sizes.max()),
        "bands_rows": [clusters.bands, clusters.rows],
        "merges": clusters.stats()["merges"],
    }


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def speed(texts: list[str], repeats: int) -> tuple[dict, dict]:
    """Messages per second (best wall-clock run, and best CPU-time run) of every contender. The
    repeats are interleaved (one run of each contender per round), so load from other processes
    on the shared machine hits all of them alike."""
    from datasketch import MinHash

    n = len(texts)
    shingle_lists = [shingles(t) for t in texts]
    batch = 10_000

    def pipeline() -> tuple[float, float]:
        clusters = ContentClusters()  # a fresh state each run; its allocation is not timed

        def run() -> None:
            for start in range(0, n, batch):
                stop = min(n, start + batch)
                clusters.assign(
                    np.arange(start, stop, dtype=np.int64) * 100,
                    np.arange(start + 1, stop + 1, dtype=np.uint64),
                    np.arange(n + start + 1, n + stop + 1, dtype=np.uint64),
                    np.full(stop - start, 4, dtype=np.uint16),
                    texts[start:stop],
                )

        return _timed(run)

    contenders = {
        "datasketch_affine32": lambda: _timed(
            lambda: MinHash.bulk(shingle_lists, num_perm=128, seed=1, scheme="affine32")
        ),
        "datasketch_legacy": lambda: _timed(
            lambda: MinHash.bulk(shingle_lists, num_perm=128, seed=1, scheme="legacy")
        ),
        "affine32": lambda: _timed(lambda: signatures(texts, num_perm=128, scheme="affine32")),
        "legacy": lambda: _timed(lambda: signatures(texts, num_perm=128, scheme="legacy")),
        "fast128": lambda: _timed(lambda: signatures(texts, num_perm=128, scheme="fast")),
        "fast64": lambda: _timed(lambda: signatures(texts, num_perm=64, scheme="fast")),
        "pipeline": pipeline,
    }
    for scheme in ("affine32", "legacy", "fast"):  # compile, or load from Numba's cache
        signatures(texts[:10], num_perm=128, scheme=scheme)
    signatures(texts[:10], num_perm=64, scheme="fast")
    ContentClusters(capacity=16).warm_up()
    best_wall = dict.fromkeys(contenders, float("inf"))
    best_cpu = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, run in contenders.items():
            wall, cpu = run()
            best_wall[name] = min(best_wall[name], wall)
            best_cpu[name] = min(best_cpu[name], cpu)
    return (
        {name: n / t for name, t in best_wall.items()},
        {name: n / t for name, t in best_cpu.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed-texts", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    texts, campaign = build_corpus(args.seed)
    print(
        f"corpus: {len(texts)} texts ({np.count_nonzero(campaign < 0)} real ham, "
        f"{np.count_nonzero(campaign >= 0)} mutated copies of "
        f"{len(set(campaign[campaign >= 0].tolist()))} real spam templates)"
    )
    acc = {} if args.skip_accuracy else accuracy(texts, campaign)
    if acc:
        print(
            f"\nnear-duplicate pairs (exact Jaccard >= {THRESHOLD}): {acc['pairs']}, "
            f"Jaccard quartiles {acc['pair_jaccard_quartiles']}"
        )
        print(f"  {'ours: campaign clusters (final)':46s} recall {acc['pair_recall']:.4f}")
        print(
            f"  {'ours: campaign clusters (ids at arrival)':46s} recall "
            f"{acc['pair_recall_at_arrival']:.4f}"
        )
        print(
            f"  {'ours: LSH band candidates (64 values, 14x4)':46s} recall "
            f"{acc['lsh_candidate_pair_recall']:.4f}"
        )
        print(
            f"  {'datasketch MinHashLSH(0.5, num_perm=64)':46s} recall "
            f"{acc['datasketch_lsh_pair_recall']:.4f}"
        )
        print(
            f"  {'datasketch MinHashLSH(0.5, num_perm=128)':46s} recall "
            f"{acc['datasketch_lsh128_pair_recall']:.4f}"
        )
        print(
            "  ours (final) by Jaccard: "
            + ", ".join(
                f"{span} {pairs} pairs {recall:.3f}"
                for span, (pairs, recall) in acc["recall_by_jaccard"].items()
            )
        )
        print(
            f"  cluster purity: median Jaccard of pairs inside a cluster "
            f"{acc['in_cluster_pair_jaccard_median']:.3f}, below 0.3: "
            f"{acc['in_cluster_pairs_below_0.3']:.3f}; clusters {acc['clusters']}, largest "
            f"{acc['largest_cluster']}, merges {acc['merges']}"
        )
    rng = random.Random(args.seed)
    speed_texts = [texts[rng.randrange(len(texts))] for _ in range(args.speed_texts)]
    mean_chars = sum(map(len, speed_texts)) / len(speed_texts)
    rates, cpu_rates = speed(speed_texts, args.repeats)
    print(
        f"\nspeed: {len(speed_texts)} texts, mean {mean_chars:.0f} chars, best of {args.repeats}, "
        f"messages/s (one thread)"
    )
    for scheme in ("affine32", "legacy"):
        ds = rates[f"datasketch_{scheme}"]
        print(
            f"  {scheme:9s} datasketch MinHash.bulk {ds:>10,.0f}   ours {rates[scheme]:>10,.0f}"
            f"   x{rates[scheme] / ds:.1f}"
        )
    ds = rates["datasketch_affine32"]
    for k in (128, 64):
        print(
            f"  fast (num_perm={k}) {rates[f'fast{k}']:>10,.0f}   x{rates[f'fast{k}'] / ds:.1f} "
            f"vs datasketch affine32"
        )
    print(
        f"  strings -> cluster ids and stats (ContentClusters.assign, batches of 10k): "
        f"{rates['pipeline']:,.0f}"
    )
    cpu_ds = cpu_rates["datasketch_affine32"]
    print(
        "  per CPU second instead of wall clock: speed-ups affine32 "
        f"x{cpu_rates['affine32'] / cpu_ds:.1f}, legacy "
        f"x{cpu_rates['legacy'] / cpu_rates['datasketch_legacy']:.1f}, fast "
        f"x{cpu_rates['fast128'] / cpu_ds:.1f}; pipeline {cpu_rates['pipeline']:,.0f} msgs/s"
    )
    load_after = os.getloadavg()
    print(
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"({os.cpu_count()} CPUs)"
    )
    summary = {
        "datasketch_msgs_per_s": round(ds),
        "datasketch_legacy_msgs_per_s": round(rates["datasketch_legacy"]),
        "legacy_msgs_per_s": round(rates["legacy"]),
        "affine32_msgs_per_s": round(rates["affine32"]),
        "fast_msgs_per_s": round(rates["fast128"]),
        "fast64_msgs_per_s": round(rates["fast64"]),
        "pipeline_msgs_per_s": round(rates["pipeline"]),
        "legacy_speedup": round(rates["legacy"] / rates["datasketch_legacy"], 2),
        "affine32_speedup": round(rates["affine32"] / ds, 2),
        "fast_speedup": round(rates["fast128"] / ds, 2),
        "pair_recall": round(acc.get("pair_recall", float("nan")), 4),
        "pair_recall_at_arrival": round(acc.get("pair_recall_at_arrival", float("nan")), 4),
        "lsh_candidate_pair_recall": round(acc.get("lsh_candidate_pair_recall", float("nan")), 4),
        "datasketch_lsh_pair_recall": round(acc.get("datasketch_lsh_pair_recall", float("nan")), 4),
        "load_avg_1m": round(load_after[0], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
