"""Head-end sources: systems that read meters for us (Coherent MTS, Locus Energy).

Unlike a polled meter, a source delivers samples that carry their own timestamps, often in
batches (a half-hourly survey, a backfill window). It writes them through `store_new_samples`
so the store's per-meter order holds and overlapping batches are stored once.
"""
