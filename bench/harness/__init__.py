"""What every benchmark stands on (imports nothing else of ``bench``):

- ``timing``: thread settings, round-robin samples, medians (import it first: it sets ``OMP_WAIT_POLICY``);
- ``memory``: the peak memory of a code region (resident memory on CPU, allocated memory on CUDA);
- ``report``: CSV rows that say when, where and at which commit they were measured; the exit status.
"""
