import random
import unicodedata
import zipfile

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from detector.content import ClusterFeatures, ContentClusters, encode_texts, shingles, signatures
from detector.events import StringColumn
from detector.simulator import DEFAULT_SMS_PATH
from kernels.minhash import EMPTY_32
from tests.kernels import reference_content as ref

CONTACT_KNOWN = 4
IN_CONTACTS = 8


def sms_texts() -> list[str]:
    with open(DEFAULT_SMS_PATH, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t", 1)[1] for line in f]


def random_unicode_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyz      ",
        "ABCDEFGHIJ0123456789.,:/-!? ",
        "éàüßÉİΣςŉΐﬁＡ１٣①",
        "\u200b\xad\u3000\xa0\t\n",
        "😀🎉👍🏽\u200d",
        "абвгдежзий ",
        "中文字符測試 ",
    ]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(0, 40)):
            pool = rng.choice(pools)
            parts.append(rng.choice(pool))
            if rng.random() < 0.05:
                parts.append(rng.choice(["www.x.com", " http://a.b/c ", " 0800-123 ", "\ud800"]))
        out.append("".join(parts))
    return out


# -- shingles and encoding -----------------------------------------------------------------------


def test_shingles_follow_the_reference_spec():
    for text in sms_texts()[:500] + random_unicode_texts(300, 1) + ["", "a\x00b"]:
        assert shingles(text) == ref.shingles(text), text


def test_shingles_example():
    assert shingles("WIN £1000 at www.prize.com!") == [
        b"win \xc2\xa3",
        b"in \xc2\xa3N",
        b"n \xc2\xa3N ",
        b" \xc2\xa3N a",
        b"\xc2\xa3N at",
        b"N at ",
        b" at U",
    ]


def test_encode_texts_handles_none_nul_and_non_ascii():
    texts = ["abc", None, "ﬁ\x00x", "", "Ünï"]
    enc = encode_texts(texts)
    data = enc.data.tobytes()
    pieces = [data[a:b].decode("utf-8") for a, b in zip(enc.starts, enc.stops, strict=True)]
    assert pieces == ["abc", "", "fi x", "", unicodedata.normalize("NFKC", "Ünï")]
    raw = enc.raw.tobytes()
    originals = [
        raw[a:b].decode("utf-8") for a, b in zip(enc.raw_starts, enc.raw_stops, strict=True)
    ]
    assert originals == ["abc", "", "ﬁ x", "", "Ünï"]


def test_texts_left_in_the_decoders_buffer_encode_like_python_strings():
    texts = ["abc", None, "ﬁ\x00x", "", "Ünï", "ＷＩＮ now", *sms_texts()[:500]]
    texts += random_unicode_texts(300, 3)
    column = StringColumn.from_strings(texts)
    for scheme in ("fast", "affine32"):
        expected = signatures(texts, num_perm=64, seed=3, scheme=scheme)
        assert np.array_equal(signatures(column, num_perm=64, seed=3, scheme=scheme), expected)
    enc = encode_texts(column)
    raw = enc.raw.tobytes()
    spans = zip(enc.raw_starts, enc.raw_stops, strict=True)
    originals = [raw[a:b].decode("utf-8", "surrogatepass") for a, b in spans]
    assert originals == [t or "" for t in texts]


# -- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_are_bit_identical_to_datasketch(scheme):
    texts = sms_texts() + random_unicode_texts(2000, 2)
    ours = signatures(texts, num_perm=128, seed=1, scheme=scheme)
    theirs = MinHash.bulk([shingles(t) for t in texts], num_perm=128, seed=1, scheme=scheme)
    expected = np.array([m.hashvalues for m in theirs])
    assert ours.dtype == expected.dtype
    assert np.array_equal(ours, expected)


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_bit_identical_for_other_seeds_and_sizes(scheme):
    texts = random_unicode_texts(300, 3)
    for num_perm, seed in [(1, 0), (17, 12345), (256, 7)]:
        ours = signatures(texts, num_perm=num_perm, seed=seed, scheme=scheme)
        theirs = MinHash.bulk(
            [shingles(t) for t in texts], num_perm=num_perm, seed=seed, scheme=scheme
        )
        assert np.array_equal(ours, np.array([m.hashvalues for m in theirs]))


def test_signatures_work_with_datasketch_lsh():
    texts = ["free entry to win a prize today", "free entry to win a prize today!", "see you"]
    sigs = signatures(texts, num_perm=128, scheme="affine32")
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    for i, sig in enumerate(sigs):
        lsh.insert(i, MinHash(hashvalues=sig, scheme="affine32"))
    assert sorted(lsh.query(MinHash(hashvalues=sigs[0], scheme="affine32"))) == [0, 1]


def test_signature_shapes_and_empty_texts():
    assert signatures([], scheme="legacy").shape == (0, 128)
    for scheme, dtype in [("fast", np.uint32), ("affine32", np.uint32), ("legacy", np.uint64)]:
        sigs = signatures(["hello there", None, "", "   "], num_perm=16, scheme=scheme)
        assert sigs.shape == (4, 16) and sigs.dtype == dtype
        assert (sigs[1:] == EMPTY_32).all() and not (sigs[0] == EMPTY_32).all()
    with pytest.raises(ValueError):
        signatures(["x"], scheme="affine64")


# -- clusters ------------------------------------------------------------------------------------


def batch(texts, *, ts_ms, account, peer, flags):
    n = len(texts)

    def as_array(v, dtype):
        return np.full(n, v, dtype=dtype) if np.isscalar(v) else np.asarray(v, dtype)

    return (
        as_array(ts_ms, np.int64),
        as_array(account, np.uint64),
        as_array(peer, np.uint64),
        as_array(flags, np.uint16),
        texts,
    )


def test_festive_greetings_to_contacts_versus_spam_to_strangers():
    clusters = ContentClusters(capacity=1000)
    rng = random.Random(4)
    greeting = "Happy new year to you and your family! Wishing you all the best for {}"
    spam = "URGENT! You have won a £{} prize. Claim now at www.win{}.com or call 0906{}"
    texts, ts, account, peer, flags = [], [], [], [], []
    for i in range(200):  # 50 friends each greet 4 of their contacts, small edits each time
        texts.append(greeting.format(rng.choice(["2025", "the year", "everything"])))
        account.append(1 + i // 4)
        peer.append(10_000 + i)
        flags.append(CONTACT_KNOWN | IN_CONTACTS)
        ts.append(i * 1000)
    for i in range(200):  # 20 fresh accounts send lightly mutated spam to strangers
        texts.append(spam.format(rng.randrange(100, 999), rng.randrange(99), rng.randrange(10**6)))
        account.append(500 + i % 20)
        peer.append(20_000 + i)
        flags.append(CONTACT_KNOWN)
        ts.append(i * 1000 + 500)
    order = np.argsort(ts, kind="stable")
    features = clusters.assign(
        *batch(
            [texts[i] for i in order],
            ts_ms=np.array(ts)[order],
            account=np.array(account)[order],
            peer=np.array(peer)[order],
            flags=np.array(flags)[order],
        )
    )
    assert isinstance(features, ClusterFeatures)
    is_spam = np.array(account)[order] >= 500
    greet_ids = set(features.cluster_id[~is_spam].tolist())
    spam_ids = set(features.cluster_id[is_spam].tolist())
    assert len(greet_ids) == 1 and len(spam_ids) == 1 and greet_ids != spam_ids
    last_greeting = np.flatnonzero(~is_spam)[-1]
    last_spam = np.flatnonzero(is_spam)[-1]
    # Same shape of campaign: many senders, many recipients...
    assert features.cluster_senders[last_greeting] == 50
    assert features.cluster_senders[last_spam] == 20
    assert features.cluster_recipients[last_greeting] == 200
    assert features.cluster_recipients[last_spam] == 200
    # ... but greetings go to contacts and spam to strangers.
    assert features.cluster_contact_known[last_greeting] == 200
    assert features.cluster_non_contact[last_greeting] == 0
    assert (
        features.cluster_non_contact[last_spam] == features.cluster_contact_known[last_spam] == 200
    )
    assert features.account_copies[last_spam] == 10 and features.account_copies[last_greeting] == 4
    assert clusters.exemplar(int(features.cluster_id[last_spam])).startswith("URGENT! You have won")


def test_texts_without_text_are_skipped():
    clusters = ContentClusters(capacity=100)
    features = clusters.assign(
        *batch(
            [None, "hello there my friend", None, "", "   "], ts_ms=5, account=1, peer=2, flags=4
        )
    )
    assert features.cluster_id.tolist() == [-1, features.cluster_id[1], -1, -1, -1]
    assert features.cluster_id[1] >= 0
    for name in ClusterFeatures._fields[1:]:
        values = getattr(features, name)
        assert values.shape == (5,)
        assert values[[0, 2, 3, 4]].tolist() == [0, 0, 0, 0], name
    assert clusters.stats()["clusters"] == 1
    empty = clusters.assign(*batch([], ts_ms=0, account=1, peer=2, flags=0))
    assert all(len(v) == 0 for v in empty)


def test_assign_checks_lengths():
    clusters = ContentClusters(capacity=10)
    with pytest.raises(ValueError):
        clusters.assign(
            np.zeros(2, np.int64),
            np.ones(2, np.uint64),
            np.ones(2, np.uint64),
            np.zeros(2, np.uint16),
            ["only one"],
        )


def test_near_duplicates_join_and_unrelated_texts_do_not():
    clusters = ContentClusters(capacity=100)
    texts = [
        "Congratulations! You have been selected for a free cruise. Reply YES to claim",
        "Congratulations!! You have been selected for a FREE cruise. Reply YES to claim now",
        "congratulations you have been selected for a free cruise, reply yes to claim",
        "Are we still meeting for lunch tomorrow at the usual place?",
    ]
    ids = clusters.assign(
        *batch(texts, ts_ms=np.arange(4), account=np.arange(1, 5), peer=9, flags=0)
    )
    assert ids.cluster_id[0] == ids.cluster_id[1] == ids.cluster_id[2] != ids.cluster_id[3]
    assert clusters.roots(ids.cluster_id).tolist() == ids.cluster_id.tolist()


def test_stats_and_warm_up():
    clusters = ContentClusters(capacity=64, window_s=60, ttl_s=120)
    clusters.warm_up()
    assert clusters.stats()["clusters"] == 0  # warm-up leaves the state alone
    clusters.assign(
        *batch(["one text here", "another text"], ts_ms=[0, 1], account=1, peer=2, flags=0)
    )
    stats = clusters.stats()
    assert stats["clusters"] == 2 and stats["capacity"] == 64 and stats["evictions"] == 0
    assert stats["nbytes"] > 0 and (stats["bands"], stats["rows"]) == (14, 4)
    clusters.assign(*batch(["a third one"], ts_ms=[200_000], account=1, peer=2, flags=0))
    assert clusters.stats()["expirations"] == 2


# -- snapshots -----------------------------------------------------------------------------------


def _stream(n: int, seed: int):
    rng = random.Random(seed)
    templates = sms_texts()[:40]
    texts = [rng.choice(templates) + rng.choice(["", "!", " ok", " 123"]) for _ in range(n)]
    return batch(
        texts,
        ts_ms=np.sort(np.array([rng.randrange(0, 600_000) for _ in range(n)])),
        account=[rng.randrange(1, 30) for _ in range(n)],
        peer=[rng.randrange(0, 50) for _ in range(n)],
        flags=[rng.choice([0, 4, 12]) for _ in range(n)],
    )


def test_save_load_continues_identically(tmp_path):
    clusters = ContentClusters(capacity=32, window_s=120)
    clusters.assign(*_stream(300, 1))
    path = tmp_path / "content.npz"
    clusters.save(path, event_time_ms=600_000)
    restored = ContentClusters.load(path)
    assert restored.event_time_ms == 600_000
    assert restored.stats() == clusters.stats()
    later = _stream(300, 2)
    later = (later[0] + 600_000, *later[1:])
    a = clusters.assign(*later)
    b = restored.assign(*later)
    for name in ClusterFeatures._fields:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_snapshot_holds_no_text(tmp_path):
    clusters = ContentClusters(capacity=16)
    secret = "my very private message about the surprise party"
    cid = int(clusters.assign(*batch([secret], ts_ms=0, account=1, peer=2, flags=0)).cluster_id[0])
    assert clusters.exemplar(cid) == secret
    path = tmp_path / "content.npz"
    clusters.save(path, event_time_ms=0)
    with zipfile.ZipFile(path) as z:
        blob = b"".join(z.read(name) for name in z.namelist())
    assert b"private" not in blob and b"surprise" not in blob
    restored = ContentClusters.load(path)
    assert restored.exemplar(cid) is None
    assert clusters.exemplar(cid) == secret  # saving does not drop the live exemplar


def test_corrupted_snapshots_are_rejected(tmp_path):
    clusters = ContentClusters(capacity=16)
    clusters.assign(*batch(["some text to remember"], ts_ms=0, account=1, peer=2, flags=0))
    path = tmp_path / "content.npz"
    clusters.save(path, event_time_ms=0)
    # Change one stored array (a valid npz whose checksum no longer matches).
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["counts"] = arrays["counts"].copy()
    arrays["counts"].flat[0] += 1
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(ValueError, match="checksum"):
        ContentClusters.load(tampered)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError):
        ContentClusters.load(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a snapshot at all")
    with pytest.raises(ValueError):
        ContentClusters.load(garbage)
    with pytest.raises(FileNotFoundError):
        ContentClusters.load(tmp_path / "missing.npz")


def test_exemplar_of_unknown_clusters():
    clusters = ContentClusters(capacity=4, exemplar_chars=10)
    cid = int(
        clusters.assign(
            *batch(["Ünïcödé text that is long"], ts_ms=0, account=1, peer=2, flags=0)
        ).cluster_id[0]
    )
    assert clusters.exemplar(cid) == "Ünïcöd"  # 9 of 10 bytes: "é" would not fit
    assert clusters.exemplar(-1) is None and clusters.exemplar(cid + 4) is None
