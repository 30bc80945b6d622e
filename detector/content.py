"""Near-duplicate content: shingles, MinHash signatures and campaign clusters across accounts.

Normalisation (``shingles``): Unicode NFKC, case folding, NUL as a space, invisible format characters
(zero-width space/joiners, soft hyphen, bidi controls, BOM) removed, Unicode whitespace collapsed,
URL tokens reduced to ``U`` and numbers (``\\d+(?:[.,:/-]\\d+)*``) to ``N``; then overlapping
5-character shingles (character shingles survive the typos, spacing and word swaps of mutated spam
better than word shingles, and SMS texts are short). The exact rules are in ``kernels.minhash``.

Speed: a batch's texts are joined once (``"\\0".join``) and encoded once; only non-ASCII texts go
through ``unicodedata.normalize("NFKC")`` (``str.isascii`` is O(1)); everything after that (case
folding from tables, tokens, placeholders, shingles, hashes, bands, clusters) runs in Numba over the
one buffer.

Schemes: ``affine32`` and ``legacy`` are bit-identical to datasketch 2.x ``MinHash`` updated with
``shingles(text)``, so signatures can go to datasketch's ``MinHashLSH`` and its storage backends.
``fast`` (the detector's default) hashes each shingle once and uses one-permutation hashing with
optimal densification; its Jaccard estimates match classic MinHash's accuracy at equal ``num_perm``
(``tests/kernels/test_minhash.py`` measures it).
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import unicodedata
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from detector.events import StringColumn
from kernels import lsh as lsh_kernels
from kernels import minhash as minhash_kernels

SCHEMES = ("fast", "affine32", "legacy")
SNAPSHOT_FORMAT = 1


class EncodedTexts(NamedTuple):
    """A batch of texts as UTF-8 buffers: ``data`` is NFKC-normalised (or plain ASCII), ready for
    ``kernels.minhash.normalise_utf8``; ``raw`` is the original text (for exemplars)."""

    data: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    raw: np.ndarray
    raw_starts: np.ndarray
    raw_stops: np.ndarray


class ClusterFeatures(NamedTuple):
    """Per-message content features, values after applying the message (all length n)."""

    cluster_id: np.ndarray  # int64, -1 when the message has no text (or no shingles)
    cluster_msgs: np.ndarray  # uint32, messages of the cluster in the window
    cluster_senders: np.ndarray  # uint32, distinct senders in the window
    cluster_recipients: np.ndarray  # uint32, distinct recipients (peers) in the window
    cluster_contact_known: np.ndarray  # uint32, messages whose contact relation is known
    cluster_non_contact: np.ndarray  # uint32, of those, messages to non-contacts
    cluster_first_seen_ms: np.ndarray  # int64, event time the cluster was first seen
    account_copies: np.ndarray  # uint32, copies of the cluster sent by this account in the window


def encode_texts(texts: Sequence[str | None]) -> EncodedTexts:
    """Join, NFKC-normalise (non-ASCII texts only) and UTF-8 encode a batch (None -> "")."""
    if isinstance(texts, StringColumn):
        return _encode_column(texts)
    n = len(texts)
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return EncodedTexts(
            np.empty(0, np.uint8), empty, empty, np.empty(0, np.uint8), empty, empty
        )
    items = [t or "" for t in texts] if None in texts else texts
    joined = "\x00".join(items)
    raw = np.frombuffer(joined.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    try:
        raw_starts, raw_stops = minhash_kernels.split_joined(raw, n)
    except ValueError:  # a text contains NUL: it counts as a space
        return encode_texts([t.replace("\x00", " ") for t in items])
    if joined.isascii():  # O(1): ASCII needs no NFKC (case folding happens in the kernel)
        return EncodedTexts(raw, raw_starts, raw_stops, raw, raw_starts, raw_stops)
    # Text by text: NFKC on the whole joined string would run its slow path over every text as
    # soon as one needs it; normalize() returns an already normal text itself, after a scan.
    nfkc = [t if t.isascii() else unicodedata.normalize("NFKC", t) for t in items]
    if all(map(operator.is_, nfkc, items)):
        return EncodedTexts(raw, raw_starts, raw_stops, raw, raw_starts, raw_stops)
    data = np.frombuffer("\x00".join(nfkc).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    starts, stops = minhash_kernels.split_joined(data, n)
    return EncodedTexts(data, starts, stops, raw, raw_starts, raw_stops)


def _encode_column(texts: StringColumn) -> EncodedTexts:
    """Texts the decoder left in its UTF-8 buffer: only those that are not plain ASCII are decoded
    and NFKC-normalised here (their normal form is appended to the buffer)."""
    present = texts.starts >= 0
    raw_starts = np.where(present, texts.starts, 0)
    raw_stops = np.where(present, texts.stops, 0)
    starts, stops = raw_starts.copy(), raw_stops.copy()
    normal_forms: list[bytes] = []
    position = texts.data.shape[0]
    view = memoryview(texts.data)
    rows = np.flatnonzero(~texts.plain)
    if rows.size:  # most non-ASCII texts (accents, currency, emoji) are already in NFKC
        rows = rows[~minhash_kernels.nfkc_stable_texts(texts.data, raw_starts, raw_stops, rows)]
    for row, start, stop in zip(
        rows.tolist(), texts.starts[rows].tolist(), texts.stops[rows].tolist(), strict=True
    ):
        text = str(view[start:stop], "utf-8", "surrogatepass")
        normal = unicodedata.normalize("NFKC", text.replace("\x00", " "))
        if normal is text:  # already normal (normalize returns its argument then)
            continue
        encoded = normal.encode("utf-8", "surrogatepass")
        starts[row], stops[row] = position, position + len(encoded)
        position += len(encoded)
        normal_forms.append(encoded)
    data = texts.data
    if normal_forms:
        data = np.concatenate([data, np.frombuffer(b"".join(normal_forms), dtype=np.uint8)])
    return EncodedTexts(data, starts, stops, texts.data, raw_starts, raw_stops)


class NormalisedTexts(NamedTuple):
    """Normalised UTF-8 texts back to back: text i is ``data[starts[i]:stops[i]]``."""

    data: np.ndarray
    starts: np.ndarray
    stops: np.ndarray


def normalise_batch(encoded: EncodedTexts) -> NormalisedTexts:
    return NormalisedTexts(
        *minhash_kernels.normalise_utf8(encoded.data, encoded.starts, encoded.stops)
    )


def shingles(text: str) -> list[bytes]:
    """Distinct UTF-8 character shingles of the normalised text, in order of first occurrence."""
    norm = normalise_batch(encode_texts([text]))
    sh_starts, sh_stops, _ = minhash_kernels.shingle_spans(norm.data, norm.starts, norm.stops)
    data = norm.data.tobytes()
    spans = zip(sh_starts.tolist(), sh_stops.tolist(), strict=True)
    return list(dict.fromkeys(data[start:stop] for start, stop in spans))


@lru_cache(maxsize=32)
def _permutations(scheme: str, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if scheme == "affine32":
        return minhash_kernels.affine32_permutations(num_perm, seed)
    return minhash_kernels.legacy_permutations(num_perm, seed)


def _check_scheme(scheme: str, num_perm: int) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if not 1 <= num_perm <= 1 << 16:
        raise ValueError("num_perm must be in [1, 65536]")


def normalised_signatures(
    norm: NormalisedTexts, num_perm: int = 128, seed: int = 1, scheme: str = "affine32"
) -> np.ndarray:
    """Signatures of already normalised texts (see ``signatures``)."""
    _check_scheme(scheme, num_perm)
    if scheme == "fast":
        return minhash_kernels.fast_signatures(norm.data, norm.starts, norm.stops, num_perm, seed)
    sh_starts, sh_stops, offsets = minhash_kernels.shingle_spans(norm.data, norm.starts, norm.stops)
    a, b = _permutations(scheme, num_perm, seed)
    return minhash_kernels.sha1_signatures(norm.data, sh_starts, sh_stops, offsets, a, b, scheme)


def signatures(
    texts: Sequence[str | None], num_perm: int = 128, seed: int = 1, scheme: str = "affine32"
) -> np.ndarray:
    """MinHash signatures of ``shingles(text)`` for each text, shape ``(len(texts), num_perm)``.

    ``affine32`` (uint32) and ``legacy`` (uint64) equal datasketch 2.x
    ``MinHash(num_perm=num_perm, seed=seed, scheme=scheme)`` updated with ``shingles(text)`` (its
    ``hashvalues``); ``fast`` (uint32) is this module's one-permutation scheme. A text with no
    shingles (None, empty, only spaces) gets 2**32 - 1 everywhere, like an empty datasketch MinHash.
    """
    _check_scheme(scheme, num_perm)
    if len(texts) == 0:
        dtype = np.uint64 if scheme == "legacy" else np.uint32
        return np.empty((0, num_perm), dtype=dtype)
    return normalised_signatures(normalise_batch(encode_texts(texts)), num_perm, seed, scheme)


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


class ContentClusters:
    """Campaign clusters of near-duplicate texts with sliding-window statistics.

    Args:
        capacity: clusters held at once; the least recently used is evicted when full.
        threshold: Jaccard similarity the LSH bands are tuned for (datasketch's ``MinHashLSH``
            parameter choice for ``threshold`` and ``num_perm``).
        num_perm: signature length (64 for ``fast``: 14 bands of 4 rows at threshold 0.5).
        scheme: ``"fast"`` (default), ``"affine32"`` or ``"legacy"``.
        window_s: length of the sliding window of the statistics, in event time.
        n_buckets: the window moves in ``window_s / n_buckets`` steps.
        ttl_s: a cluster without messages for this long (event time) expires.
        band_capacity: band-key table entries (default: 8 per cluster; each distinct text of a
            cluster holds up to ``bands`` keys, the least recently seen keys of a set make room);
            rounded up to 8 times a power of two. Its size drives the cost per message (random
            cache misses): 2**21 entries, 48 MiB, at the default capacity.
        pair_capacity: (cluster, account) and (cluster, peer) table entries each (default: about
            twice ``capacity``); rounded up to 8 times a power of two.
        exemplar_chars: the exemplar is the cluster's first text cut to this many characters and
            this many UTF-8 bytes (one SMS). Exemplars live in memory only; ``save`` never writes them.
        seed: seed of the signatures and band keys.
        merge_min_votes: a message that joins one cluster and also matches another with at least
            this many bands merges the other into the one it joins (0: never merge).
    """

    def __init__(
        self,
        capacity: int = 200_000,
        *,
        threshold: float = 0.5,
        num_perm: int = 64,
        scheme: str = "fast",
        window_s: int = 3600,
        n_buckets: int = 6,
        ttl_s: int = 7200,
        band_capacity: int | None = None,
        pair_capacity: int | None = None,
        exemplar_chars: int = 160,
        seed: int = 1,
        merge_min_votes: int = 2,
    ) -> None:
        _check_scheme(scheme, num_perm)
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if window_s <= 0 or ttl_s < 0:
            raise ValueError("window_s must be > 0 and ttl_s >= 0")
        if exemplar_chars < 0:
            raise ValueError("exemplar_chars must be >= 0")
        bands, rows = lsh_kernels.optimal_bands(threshold, num_perm)
        ways = lsh_kernels.WAYS
        if band_capacity is None:
            band_capacity = 8 * capacity
        if pair_capacity is None:
            pair_capacity = 2 * capacity
        band_capacity = ways * _pow2_at_least(-(-band_capacity // ways))
        pair_capacity = ways * _pow2_at_least(-(-pair_capacity // ways))
        self.config = {
            "format": SNAPSHOT_FORMAT,
            "capacity": int(capacity),
            "threshold": float(threshold),
            "num_perm": int(num_perm),
            "scheme": scheme,
            "window_s": int(window_s),
            "n_buckets": int(n_buckets),
            "ttl_s": int(ttl_s),
            "band_capacity": int(band_capacity),
            "pair_capacity": int(pair_capacity),
            "exemplar_chars": int(exemplar_chars),
            "seed": int(seed),
            "merge_min_votes": int(merge_min_votes),
            "bands": int(bands),
            "rows": int(rows),
        }
        self.bands = bands
        self.rows = rows
        self.num_perm = num_perm
        self.scheme = scheme
        self.seed = seed
        self.exemplar_chars = exemplar_chars
        self.event_time_ms: int | None = None  # set by load()
        self._band_seed = int(minhash_kernels.seed64(seed ^ 0x5BD1E995))
        self.state = lsh_kernels.new_cluster_state(
            capacity,
            band_capacity=band_capacity,
            pair_capacity=pair_capacity,
            window_ms=window_s * 1000,
            n_buckets=n_buckets,
            ttl_ms=ttl_s * 1000,
            exemplar_bytes=exemplar_chars,
            merge_min_votes=merge_min_votes,
        )

    # -- per batch ------------------------------------------------------------------------------
    def band_keys_of(
        self, texts: Sequence[str | None]
    ) -> tuple[np.ndarray, np.ndarray, EncodedTexts]:
        """(band keys, has-shingles mask, encoded texts) of a batch, as ``assign`` computes them."""
        encoded = encode_texts(texts)
        norm = normalise_batch(encoded)
        sigs = normalised_signatures(norm, self.num_perm, self.seed, self.scheme)
        has_keys = norm.stops > norm.starts  # a non-empty normalised text has >= 1 shingle
        keys = lsh_kernels.band_keys(sigs, self.bands, self.rows, self._band_seed, has_keys)
        return keys, has_keys, encoded

    def assign(
        self,
        ts_ms: np.ndarray,
        account: np.ndarray,
        peer: np.ndarray,
        flags: np.ndarray,
        texts: Sequence[str | None],
    ) -> ClusterFeatures:
        """Cluster each message's text (in batch order) and return its cluster features.

        ``ts_ms`` int64, ``account``/``peer`` uint64, ``flags`` uint16 (``CONTACT_KNOWN=4``,
        ``IN_CONTACTS=8`` are read), ``texts`` a list of str or None. Messages without text (or whose
        text normalises to nothing) get cluster_id -1 and zeros, and leave the state untouched."""
        n = len(texts)
        if len(ts_ms) != n:
            raise ValueError(f"texts has {n} entries, ts_ms has {len(ts_ms)}")
        if n == 0:
            return ClusterFeatures(*lsh_kernels.new_feature_arrays(0))
        keys, has_keys, encoded = self.band_keys_of(texts)
        features = lsh_kernels.assign_clusters(
            self.state,
            keys,
            has_keys,
            ts_ms,
            account,
            peer,
            flags,
            encoded.raw,
            encoded.raw_starts,
            encoded.raw_stops,
            self.exemplar_chars,
        )
        return ClusterFeatures(*features)

    def roots(self, cluster_ids: np.ndarray) -> np.ndarray:
        """Current cluster of each id after later merges (ids of clusters no longer held, and -1,
        map to themselves)."""
        return lsh_kernels.resolve_roots(self.state, np.ascontiguousarray(cluster_ids, np.int64))

    # -- evidence and introspection -------------------------------------------------------------
    def exemplar(self, cluster_id: int) -> str | None:
        """The first text of a cluster still held (truncated), or None (unknown, gone, restored)."""
        if cluster_id < 0:
            return None
        clusters = self.state.clusters
        slot = int(cluster_id) % clusters.shape[0]
        if clusters[slot, lsh_kernels.CL_ID] != cluster_id:
            return None
        length = int(clusters[slot, lsh_kernels.CL_EXEMPLAR_BYTES])
        if length == 0:
            return None
        return self.state.exemplar[slot, :length].tobytes().decode("utf-8", "surrogatepass")

    def stats(self) -> dict:
        """clusters (live roots: held, not merged, not idle past the TTL), merged_aliases (merged
        clusters still holding a slot), capacity, evictions, expirations, band_evictions,
        pair_evictions, merges, nbytes of the state, bands, rows, num_perm, scheme."""
        meta = self.state.meta
        clusters = self.state.clusters
        idle_ms = meta[lsh_kernels.META_NOW_MS] - clusters[:, lsh_kernels.CL_LAST_SEEN_MS]
        live = (clusters[:, lsh_kernels.CL_ID] >= 0) & (idle_ms <= meta[lsh_kernels.META_TTL_MS])
        merged = clusters[:, lsh_kernels.CL_MERGED_INTO] >= 0
        return {
            "clusters": int(np.count_nonzero(live & ~merged)),
            "merged_aliases": int(np.count_nonzero(live & merged)),
            "capacity": int(clusters.shape[0]),
            "evictions": int(meta[lsh_kernels.META_EVICTIONS]),
            "expirations": int(meta[lsh_kernels.META_EXPIRATIONS]),
            "band_evictions": int(meta[lsh_kernels.META_BAND_EVICTIONS]),
            "pair_evictions": int(meta[lsh_kernels.META_PAIR_EVICTIONS]),
            "merges": int(meta[lsh_kernels.META_MERGES]),
            "nbytes": int(sum(a.nbytes for a in self.state)),
            "bands": self.bands,
            "rows": self.rows,
            "num_perm": self.num_perm,
            "scheme": self.scheme,
        }

    def warm_up(self) -> None:
        """Compile (or load from cache) every kernel, on a throwaway state."""
        scratch = ContentClusters(
            capacity=4,
            num_perm=self.num_perm,
            scheme=self.scheme,
            band_capacity=8,
            pair_capacity=8,
            exemplar_chars=8,
        )
        n = 3
        scratch.assign(
            np.arange(n, dtype=np.int64),
            np.ones(n, dtype=np.uint64),
            np.arange(n, dtype=np.uint64),
            np.full(n, 4, dtype=np.uint16),
            ["Ünïcode wârm-up 1 www.x.com", None, "warm up 2"],
        )
        scratch.roots(np.zeros(1, dtype=np.int64))
        for scheme in SCHEMES:
            signatures(["warm up"], num_perm=4, scheme=scheme)
        lsh_kernels.band_keys(np.zeros((1, 4), dtype=np.uint64), 2, 2)

    # -- snapshots ------------------------------------------------------------------------------
    def _persisted(self) -> dict[str, np.ndarray]:
        """The state arrays a snapshot holds: no exemplar bytes, and no exemplar lengths."""
        arrays = {name: arr for name, arr in self.state._asdict().items() if name != "exemplar"}
        clusters = arrays["clusters"].copy()
        clusters[:, lsh_kernels.CL_EXEMPLAR_BYTES] = 0
        arrays["clusters"] = clusters
        return arrays

    @staticmethod
    def _checksum(arrays: dict[str, np.ndarray], config_json: str, event_time_ms: int) -> str:
        digest = hashlib.sha256()
        digest.update(config_json.encode())
        digest.update(str(int(event_time_ms)).encode())
        for name in sorted(arrays):
            arr = np.ascontiguousarray(arrays[name])
            digest.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
            digest.update(arr.tobytes())
        return digest.hexdigest()

    def save(self, path: str | os.PathLike, *, event_time_ms: int) -> None:
        """Write sketches and counts (never exemplar texts) to ``path`` (npz, atomically), with the
        event time they reflect and a SHA-256 checksum verified by ``load``."""
        arrays = self._persisted()
        config_json = json.dumps(self.config, sort_keys=True)
        checksum = self._checksum(arrays, config_json, event_time_ms)
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as f:
            np.savez(
                f,
                config=np.array(config_json),
                event_time_ms=np.array(int(event_time_ms), dtype=np.int64),
                checksum=np.array(checksum),
                **arrays,
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ContentClusters:
        """Restore a ``save``d state (exemplars empty); ``event_time_ms`` holds the saved event
        time. Raises ValueError if the file is not a valid snapshot or fails its checksum."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                files = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise ValueError(f"{path}: not a readable content snapshot ({err})") from err
        try:
            config_json = str(files.pop("config"))
            event_time_ms = int(files.pop("event_time_ms"))
            checksum = str(files.pop("checksum"))
            config = json.loads(config_json)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: content snapshot lacks its header ({err})") from err
        if checksum != cls._checksum(files, config_json, event_time_ms):
            raise ValueError(f"{path}: content snapshot checksum mismatch (corrupted file)")
        if config.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"{path}: unsupported content snapshot format {config.get('format')}")
        keys = (
            "threshold",
            "num_perm",
            "scheme",
            "window_s",
            "n_buckets",
            "ttl_s",
            "band_capacity",
            "pair_capacity",
            "exemplar_chars",
            "seed",
            "merge_min_votes",
        )
        clusters = cls(config["capacity"], **{k: config[k] for k in keys})
        fresh = clusters.state._asdict()
        for name, arr in files.items():
            if (
                name not in fresh
                or fresh[name].shape != arr.shape
                or fresh[name].dtype != arr.dtype
            ):
                raise ValueError(f"{path}: content snapshot array {name!r} does not fit its config")
            fresh[name][...] = arr
        missing = set(clusters._persisted()) - set(files)
        if missing:
            raise ValueError(f"{path}: content snapshot lacks arrays {sorted(missing)}")
        clusters.event_time_ms = event_time_ms
        return clusters
