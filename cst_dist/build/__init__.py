"""`cst build`: self-critique pairs -> the CST preference set (Parquet + dataset card + manifest).

inputs.py  what a build reads: pairs files and `cst generate` folders, the paper's released set, extra tasks; each
           row checked under `build.on_bad_row`, each source recorded for the manifest
rows.py    CST doubling (a pair under s1, and reversed under s0 unless `build.mode=dpo`), unique ids, and the split
           that keeps both rows of a pair on one side
run.py     `build_preference_set`: the output checks, the folder (splits, dataset card, manifest) written atomically

The folder is read back by `cst_dist.data.preference_set`, the one reader of built sets on the floor.
"""
