"""The query shield: a stateful defence against online query-based attacks (issue 35).

An attacker who wants one image that fools the model sends hundreds of near-identical images and reads the
answers.  Benign traffic seldom does.  The shield fingerprints every query, finds the earlier queries it
matches, and opens an attack session when one client (or one tenant across its clients) has sent too many.

    from scanner.shield import MemoryIndex, Policy, Shield     # or RedisIndex(url) for several API processes
    shield = Shield(MemoryIndex(capacity=100_000, path="shield.sqlite"))
    result = shield.check(tenant_id, client, sha256, image)   # image: the decoded PIL image
    if policy.refuses(result): ...                            # the API applies the tenant's Policy

Modules: ``fingerprint`` (what a query looks like), ``index`` (the recent queries, in-process or Redis),
``sessions`` (the decision and the ``Policy`` values).

Design, and why (numbers: ``results/shield_fingerprint.json``, ``benchmarks/shield_fingerprint.py``; CIFAR-10
here is the shared JPEG-q75 copy, not the PNG-exact release)
--------------------------------------------------------------------------------------------------------

*What is fingerprinted.*  The largest centred square, area-averaged to the model's 32x32 input, as the
engine crops and resizes: a change the model cannot see (outside its crop, finer than its input) moves no
fingerprint, so an attacker cannot make queries look new for free, and per-pixel noise of a large image
averages out.  Images larger than 256 px are first sampled on a 256 px lattice (64 pixels per cell: same
match rates as every pixel, 0.859 against 0.872 on the photos, at half the cost).

*Which fingerprint.*  Measured candidates (Blacklight window hashes on 32 px RGB and 64 px grey, shorter
windows, the DCT perceptual hash), against the queries of real attack algorithms (Square L-inf 8/255 with
torchattacks' proposals and schedule, an SPSA-style gradient estimate, random-sign and L2 noise), false
matches between different pictures, and benign variants.  Blacklight's windows (step 50, 20 values, top 50,
25 shared) match none of an SPSA run's queries on CIFAR-10 (1 of 40 runs caught in 300 queries: every value
moves by 2.55/255, so every window crosses a quantisation step somewhere), and 0% of 8/255 random-sign copies;
shorter windows match, but also match 58% of simulated camera bursts and 58% of crops.  The perceptual hash
(63 low AC frequencies against their median, 15 bands of 4 bits, 13 equal bands a match) catches every
CIFAR-10 Square and SPSA run at the first query that can (K + 1 = 6 for K = 5; p90 8), 18 and 20 of 20 Square
runs on photos (median 6 and 6.5), matches 89% of random-sign 8/255 copies on CIFAR-10 (86% on photos) and
98% of L2 0.5 copies, and false-matches 6 of 50 million CIFAR-10 test pairs (1.2e-7, near-duplicates of the
test set among them), 1 of 59,340 pairs of photos, pages, logos and patterns (a globular cluster and a
drawn pattern) and none of the test split's 2,556.  It is also the cheapest.  Flat
pictures (mean |AC| < 1 grey level) get no fingerprint: their bits would be noise and all of them would
match each other (six smooth wallpapers did).  Adaptive attacks defeat both kinds (OARS: 77.6% success
against Blacklight, 87.7% against PIHA's perceptual hash); neither kind is a defence against them alone.

*Index.*  Single 4-bit bands are useless as index keys (each value is held by 1/16 of all images), so the
15 bands are cut into 3 groups of 5 (20-bit keys): two fingerprints with at most 2 different bands agree on
a whole group (pigeonhole), so no match is missed.  A key's holders form a chain, newest first; a look-up
walks at most ``chain_depth`` (16) queries per key, so its cost does not grow with the store.

*Decision* (``sessions``).  A query opens a session when it matches 6 earlier queries of its client at its
own size, or 15 at any size; or 10 of the tenant at its size among which three clients sent three or more.
Why: the same picture fetched at every size and in every encoding a site serves (12 variants) gives at most
4 same-size matches and 10 at any size; a simulated burst of 10 frames from one camera at most 5; Square runs
reach 6 same-size matches at a median of 7-7.5 queries on photos (15 of 16 runs within 40 queries in the
tests, 91% of the later queries inside the session).  The tenant rule counts same-size matches only and
wants repeat clients, because a popular picture (two colourings of one wallpaper matched each other),
fetched by browsers at a few sizes and uploaded by many users once each, reached 30 matches with two
repeat clients in the tests.  An attacker who uses a fresh account for every two queries is not caught by
that rule (QPA's provenance analysis is the known answer: clustering queries transitively caught 43 of 48
Square runs within 10 queries against 31 with direct matches, but grew benign clusters to 6 of 10 burst
frames, so it is left for a measured next step).

*State and memory.*  ``MemoryIndex``: a ring of ``capacity`` queries in numpy arrays and a dict of at most
``capacity`` x 4 keys; measured at 10^6 stored queries: 172 MB of arrays and 105 MB of dict (~0.28 KB a
query); optionally persisted to SQLite (stdlib ``sqlite3``: the file is the shield's own, not the service's
database; writes are batched, a restart replays the window).  ``RedisIndex``: one Lua script per query
(duplicate check, look-up and insertion atomic across API processes); every key carries the window as TTL,
at most ``chain_depth`` queries per key and ``tenant_capacity`` per tenant; measured 1.1-1.5 KB a query.

*Cost* (``benchmarks/shield.py``, ``results/benchmark_shield.json``; a shared 2-core machine at load 4-6, CPU
time of the thread, a 512 px JPEG's decode ~0.9-1.2 ms): fingerprint + check over decode, in-process, 0.48 /
0.43 / 0.49 at 10^4 / 10^5 / 10^6 stored when every step follows a decode (the decode evicts the caches),
0.37 / 0.40 / 0.31 with each step in a loop of its own; the fingerprint is most of it (230-360 us), the
check 100-210 us and flat in the store's size.  Redis on the same machine (wall time, a round trip and the
script): 3.5 at 10^4 (a noisy run), 1.1 at 10^5.  The issue's target (0.2 at 10^6) is not met here.  What
would meet it: fingerprinting the engine's own 32 px model input where the image is decoded anyway (the
grid is then free: ~40 us), or a 128 px lattice (half the fingerprint's cost; 8/255 random-sign copies of
photos match 80% instead of 86%).
"""

from scanner.shield.fingerprint import DEFAULT, Spec, fingerprint
from scanner.shield.index import Index, MemoryIndex, RedisIndex
from scanner.shield.sessions import Policy, Shield, ShieldResult, Thresholds

__all__ = [
    "DEFAULT",
    "Index",
    "MemoryIndex",
    "Policy",
    "RedisIndex",
    "Shield",
    "ShieldResult",
    "Spec",
    "Thresholds",
    "fingerprint",
]
