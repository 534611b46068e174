"""The pruned structures published with DMCP (supplementary Tables 7 and 8).

Each structure is a channel configuration (gate name -> kept channels) of the
paper's supernets: MobileNetV2 1.5x and ResNet-50 (see `mobilenet_v2.py` and
`resnet.py` for the gate names).
"""

# Table 8: per block (expansion conv1 output, projection conv3 output); block 1-1
# has no expansion. Projections of one stage share a gate, so their counts agree.
_TABLE8 = {
    "300M": (15, 11, [(51, 19), (57, 19)], [(126, 34), (105, 34), (109, 34)],
             [(246, 79), (267, 79), (291, 79), (284, 79)], [(486, 102), (384, 102), (422, 102)],
             [(775, 231), (980, 231), (1082, 231)], [(1411, 417)]),
    "210M": (13, 11, [(45, 19), (63, 19)], [(110, 30), (118, 30), (113, 30)],
             [(223, 64), (241, 64), (256, 64), (272, 64)], [(415, 80), (337, 80), (361, 80)],
             [(694, 191), (858, 191), (933, 191)], [(1283, 262)]),
    "97M": (8, 7, [(33, 10), (32, 10)], [(60, 17), (59, 17), (59, 17)],
            [(154, 46), (156, 46), (194, 46), (156, 46)], [(270, 60), (177, 60), (576, 60)],
            [(462, 144), (576, 144), (672, 144)], [(864, 192)]),
    "59M": (6, 10, [(18, 12), (16, 12)], [(32, 15), (41, 15), (41, 15)],
            [(98, 36), (120, 36), (120, 36), (120, 36)], [(158, 45), (123, 45), (123, 45)],
            [(351, 96), (480, 96), (576, 96)], [(768, 128)]),
}

# Table 7: ResNet-50 2.8G. Per stage: ([(conv1, conv2) per block], shared conv3).
_TABLE7 = {
    "2.8G": (51, [
        ([(38, 42), (47, 47), (47, 47)], 223),
        ([(103, 101), (92, 96), (93, 95), (100, 100)], 461),
        ([(218, 215), (200, 212), (208, 213), (209, 213), (213, 215), (212, 215)], 945),
        ([(459, 454), (455, 455), (457, 437)], 1735),
    ]),
}


def mobilenet_v2_config(name):
    """Channel configuration of a Table 8 structure (`"300M"`, `"210M"`, `"97M"`, `"59M"`)."""
    stem, stage1, *stages = _lookup(_TABLE8, name, "MobileNetV2")
    config = {"stem": stem, "stage1": stage1}
    for s, blocks in enumerate(stages, start=2):
        for i, (expand, project) in enumerate(blocks, start=1):
            config[f"block{s}_{i}_expand"] = expand
            config[f"stage{s}"] = project
    return config


def resnet50_config(name):
    """Channel configuration of a Table 7 structure (`"2.8G"`)."""
    stem, stages = _lookup(_TABLE7, name, "ResNet-50")
    config = {"stem": stem}
    for s, (blocks, out) in enumerate(stages, start=1):
        config[f"stage{s}_out"] = out
        for b, (conv1, conv2) in enumerate(blocks, start=1):
            config[f"stage{s}_block{b}_conv1"] = conv1
            config[f"stage{s}_block{b}_conv2"] = conv2
    return config


def _lookup(table, name, model):
    if name not in table:
        raise ValueError(f"The paper publishes no {model} structure {name!r}; choose one of {sorted(table)}.")
    return table[name]


MOBILENET_V2_STRUCTURES = tuple(_TABLE8)
RESNET50_STRUCTURES = tuple(_TABLE7)
