"""Keras' private API is read in `dmcp_tf/channels/walk.py` only, behind named helpers."""

import ast
import functools
import pathlib
import re

import keras

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "dmcp_tf"
ALLOWED = {PACKAGE / "channels" / "walk.py"}
ATTRIBUTE_FUNCTIONS = ("getattr", "hasattr", "setattr")


@functools.cache
def keras_private_names():
    """Every `_name` that Keras' source sets or calls on an object, or defines as a method or class attribute."""
    pattern = re.compile(r"(?:\.|def |^\s+)(_[a-z]\w*)\s*(?:=(?!=)|\(|:)|attr\(\w+, [\"'](_[a-z]\w*)[\"']",
                         re.MULTILINE)
    root = pathlib.Path(keras.__file__).parent / "src"
    return frozenset(name for path in root.rglob("*.py") for match in pattern.findall(path.read_text())
                     for name in match if name)


def _own_names(tree):
    """The private names a module defines itself (assigned attributes, functions, class attributes)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _on_self(node):
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def keras_private_uses(source):
    """`(line, name)` of every Keras private attribute `source` reads (`x._name`, `getattr(x, "_name")`).

    `self._name` counts when the module does not define `_name` itself (a Keras
    subclass reading what Keras set).
    """
    tree, private = ast.parse(source), keras_private_names()
    own = _own_names(tree)
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private and not (_on_self(node) and node.attr in own):
            uses.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ATTRIBUTE_FUNCTIONS
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and node.args[1].value in private):
            uses.append((node.lineno, node.args[1].value))
    return uses


def test_only_walk_reads_keras_private_api():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} {name}"
             for path in sorted(PACKAGE.rglob("*.py")) if path not in ALLOWED
             for line, name in keras_private_uses(path.read_text())]
    assert not found, "Keras private API outside dmcp_tf/channels/walk.py (add a helper there):\n" + "\n".join(found)


def test_the_check_finds_private_reads():
    source = '''
import keras

class Model(keras.Model):
    def __init__(self):
        self._target = 1

    def step(self, layer, model, optimizer, v):
        nodes = layer._inbound_nodes
        functional = getattr(model, "_functional", None)
        return self._target, self._use_weight_decay(v), model.layers
'''
    assert sorted(keras_private_uses(source)) == [(9, "_inbound_nodes"), (10, "_functional"), (11, "_use_weight_decay")]


def test_walk_reads_the_private_api_it_stands_for():
    assert {"_inbound_nodes", "_inputs_struct", "_keras_history"} <= {
        name for _, name in keras_private_uses((PACKAGE / "channels" / "walk.py").read_text())}
