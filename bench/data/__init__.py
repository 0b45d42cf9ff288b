"""The data side and what is computed once and cached: ``bench_data`` (dataset listing and image
decoding), ``bench_feature_cache`` (a CoOp epoch on cached frozen image features, and the frozen image
forward), ``bench_zero_shot`` (the zero-shot classifier against open_clip's builder)."""
