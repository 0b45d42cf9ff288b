"""SoftCPT's multi-task datasets (General-10, Plant-6, Fashion-20), item-identical to the original
(kding1225/softcpt ``datasets/``): :func:`~fastprompt.data.softcpt.load.load_multitask`, which
``fastprompt.data.load_dataset("general10", ...)`` dispatches to.

    sources  the original's source classes and multi-task sets, as data
    tasks    fastprompt's task-name table, for trees without the original's task files
    split    one source's split in the three situations (split_dk / drawn as the first run / CoOp)
    items    TaskItem, TaskInfo, MultiTaskDataset
    load     merge, few-shot (original pickles or the per-task draw), task and class subsamples
"""
