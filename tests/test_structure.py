"""The structure the redesign promises, checked: protocol.py is a short script that reads only
public facts and declares every message; the parties own their state; the channel's checks
hold whatever σ says; the import circle stays broken; the fast paths change no bit; and no
module reaches into another module's private names.

Small keys (512 bits, through the explicit insecure flag) and tiny data keep it fast."""

import ast
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import insecure_keypair, small_split

import acml
from jobs import run_directory
import protocol
from channel import CIPHERTEXT, MASKED, PUBLIC, REVEALED, Channel, LeakageError, MaskSource
from fixed import Fixed
from parties import DataParty, LabelParty

ROOT = Path(__file__).resolve().parent.parent
KEY_BITS = 512
KIND_CONSTANTS = {"CIPHERTEXT": CIPHERTEXT, "MASKED": MASKED, "REVEALED": REVEALED,
                  "PUBLIC": PUBLIC}


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def parse(name):
    return ast.parse((ROOT / name).read_text(encoding="utf-8"), filename=name)


def config(**overrides):
    base = dict(hidden=(3,), epochs=1, batch_size=12, lr=0.1, key_bits=KEY_BITS,
                allow_insecure=True, init_seed=0)
    base.update(overrides)
    return acml.Config(**base)


# ----------------------------------------------------------------------------------------------
# Sizes: the script stays readable, no module grows unbounded
# ----------------------------------------------------------------------------------------------
def test_protocol_script_is_short_and_setup_comes_first():
    """protocol.py is a script one reads top to bottom: under 500 lines, and step 0 (``def
    setup``) starts within 100 lines of the end of the module docstring."""
    source = (ROOT / "protocol.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 500
    tree = ast.parse(source)
    docstring = tree.body[0]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    setup = next(node for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name == "setup")
    assert setup.lineno - docstring.end_lineno <= 100


# ----------------------------------------------------------------------------------------------
# The script reads only Public and declares every message
# ----------------------------------------------------------------------------------------------
def _imported_modules(tree, *, top_level_only: bool):
    """(module, imported names) of every import: at top level (not inside a def or class), or
    anywhere."""
    found = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name, ()) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.append((node.module or "", tuple(alias.name for alias in node.names)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if top_level_only:
                    continue
            visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return found


def test_protocol_defines_no_class_and_imports_no_party():
    """The script holds no state and knows no party class: it defines no class, imports neither
    parties.py nor anything that builds parties, and names neither DataParty nor LabelParty —
    it reads only Public (plan.py) and the channel."""
    tree = parse("protocol.py")
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    imports = _imported_modules(tree, top_level_only=False)
    modules = {module.split(".")[0] for module, _ in imports}
    assert not modules & {"parties", "acml", "checkpoint", "transport", "cli", "audit", "bench",
                          "flaws"}
    names = {name for _, imported in imports for name in imported}
    assert "Public" in names
    assert not names & {"DataParty", "LabelParty", "BottomModel"}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not used & {"DataParty", "LabelParty"}


def _sends(tree):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "send"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "channel"]


def test_every_send_in_the_script_names_a_kind_constant_and_both_sides():
    """Every ``channel.send(`` in protocol.py names its kind by one of channel.py's constants
    (never a bare string) and passes both ``make=`` (the sender's work) and ``take=`` (the
    receiver's)."""
    source = (ROOT / "protocol.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    sends = _sends(tree)
    in_strings = sum(node.value.count("channel.send(") for node in ast.walk(tree)
                     if isinstance(node, ast.Constant) and isinstance(node.value, str))
    assert len(sends) == source.count("channel.send(") - in_strings >= 10
    # and no message leaves through another name
    assert len(sends) == len([node for node in ast.walk(tree) if isinstance(node, ast.Call)
                              and isinstance(node.func, ast.Attribute)
                              and node.func.attr == "send"])
    for call in sends:
        where = f"protocol.py line {call.lineno}"
        assert len(call.args) == 5, where  # step, sender, receiver, name, kind
        kind = call.args[4]
        assert isinstance(kind, ast.Name) and kind.id in KIND_CONSTANTS, where
        keywords = {keyword.arg for keyword in call.keywords}
        assert {"make", "take"} <= keywords, where
        for keyword in call.keywords:
            if keyword.arg in ("make", "take"):
                assert isinstance(keyword.value, ast.Lambda), where


# ----------------------------------------------------------------------------------------------
# The parties own their state
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bottom", [None, (3, "relu")], ids=["no bottom", "bottom model"])
def test_parties_set_all_their_state_in_init(keypair, bottom):
    """After ``__init__``, setup, one epoch and a prediction add no attribute to either party:
    each sets all its state in its constructor and changes it only through its own methods."""
    train_set, test_set = small_split()
    cfg = config(bottom=bottom)
    sizes = cfg.layer_sizes(train_set.X.shape[1], train_set.n_classes)
    data_party = DataParty(train_set.X, plan=cfg.plan, keypair=keypair, init_seed=0,
                           bottom=bottom)
    label_party = LabelParty(train_set.y, sizes, lr=cfg.lr, batch_size=cfg.batch_size,
                             epochs=1, seed=0, plan=cfg.plan, allow_insecure=True,
                             allow_bottom=bottom is not None)
    before = {party: set(vars(party)) for party in (data_party, label_party)}
    channel = Channel(data_party=data_party, label_party=label_party)
    public = protocol.setup(channel)
    protocol.train(channel, public)
    data_party.set_rows_to_predict(test_set.X)
    protocol.predict(channel, public)
    assert label_party.predictions is not None and len(label_party.losses) > 0
    if bottom is not None:
        assert any(m.step == "4b" for m in channel.messages)
    for party, keys in before.items():
        assert set(vars(party)) == keys, type(party).__name__


def _assigned_attributes(tree):
    """(object name, attribute, line) of every assignment to ``name.attribute``."""
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Attribute):
                base = target.value
                while isinstance(base, (ast.Attribute, ast.Subscript)):
                    base = base.value
                out.append((getattr(base, "id", None), target.attr, node.lineno))
    return out


def test_checkpoint_restore_constructs_the_parties_and_writes_into_none():
    """checkpoint.py never writes into a party from outside: no ``party.x = ...`` (nor
    ``data_party.x``, ``label_party.x``) and no setattr at all; the states' ``restore``
    methods build the party through its constructor."""
    tree = parse("jobs/checkpoint.py")
    assigned = _assigned_attributes(tree)
    assert assigned  # the walk sees attribute assignments (a Standardizer's, say)
    into_parties = [(name, attribute, line) for name, attribute, line in assigned
                    if name is not None and "party" in name.lower()]
    assert into_parties == []
    calls = {node.func.id for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert "setattr" not in calls
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for state, party in (("DataPartyState", "DataParty"), ("LabelPartyState", "LabelParty")):
        restore = next(node for node in classes[state].body
                       if isinstance(node, ast.FunctionDef) and node.name == "restore")
        built = {node.func.id for node in ast.walk(restore)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert party in built, state


def test_restored_parties_are_built_whole_from_their_checkpoints(keypair, tmp_path):
    """A party restored from its checkpoint has exactly the attributes of one built by its
    constructor, and holds the saved share (ε_acc, W_B) and epoch count."""
    train_set, _ = small_split()
    result = acml.train(train_set, None, config(), keypair=keypair, checkpoint_dir=tmp_path)
    data_state, label_state = run_directory.load_pair(tmp_path, allow_insecure=True)
    data_party = data_state.restore(train_set.X)
    label_party = label_state.restore(train_set.y)
    assert type(data_party) is DataParty and type(label_party) is LabelParty
    assert set(vars(data_party)) == set(vars(result.data_party))
    assert set(vars(label_party)) == set(vars(result.label_party))
    assert np.array_equal(data_party.noise_acc.values, result.data_party.noise_acc.values)
    assert np.array_equal(label_party.weight_share.values, result.label_party.weight_share.values)
    assert data_party.epochs_completed == label_party.epochs_completed == 1


# ----------------------------------------------------------------------------------------------
# The channel's checks
# ----------------------------------------------------------------------------------------------
def stub_channel(**options):
    """A channel between two stand-in parties (it needs only their mask sources), and the list
    of what the receivers took."""
    parties = {name: types.SimpleNamespace(mask_source=MaskSource()) for name in ("data", "label")}
    received = []
    channel = Channel(data_party=parties["data"], label_party=parties["label"], **options)

    def send(step, sender, receiver, name, kind, make, **declared):
        return channel.send(step, sender, receiver, name, kind, make=make,
                            take=lambda party, value: received.append(value), **declared)

    return channel, send, received


def masked(values, bits):
    """A make() that really draws a ``bits``-wide mask over ``values`` (as a party would)."""
    return lambda party: party.mask_source.uniform(np.shape(values), bits, 0) + np.asarray(
        values, dtype=object)


@pytest.mark.parametrize("mode", ["raise", "report"])
def test_channel_refuses_a_payload_whose_shape_differs_from_the_declared_one(keypair, mode):
    """The declared shape is a public fact both sides check: a payload of any other shape is
    refused (LeakageError, in either mode), be it masked, ciphertext or revealed."""
    channel, send, received = stub_channel(mode=mode)
    send(0, "data", "label", "public key", PUBLIC, lambda party: keypair[0])
    values = np.array([1, 2], dtype=object)
    with pytest.raises(LeakageError, match="shape"):
        send(4, "data", "label", "T", MASKED, masked(values, 80), shape=(3,), mask_bits=80,
             value_bits=30)
    with pytest.raises(LeakageError, match="shape"):
        send(4, "data", "label", "T", MASKED, masked(values, 80), shape=(2, 1), mask_bits=80,
             value_bits=30)
    encrypted = keypair[1].encrypt(Fixed.from_ints(np.array([[1, 2]], dtype=object), 0))
    with pytest.raises(LeakageError, match="shape"):
        send(0, "data", "label", "[[X]]", CIPHERTEXT, lambda party: encrypted, shape=(2, 1))
    with pytest.raises(LeakageError, match="shape"):
        send(1, "data", "label", "z", REVEALED, lambda party: np.ones(3), shape=(2,),
             reason="test")
    assert received == [keypair[0]]
    send(4, "data", "label", "T", MASKED, masked(values, 80), shape=(2,), mask_bits=80,
         value_bits=30)
    send(0, "data", "label", "[[X]]", CIPHERTEXT, lambda party: encrypted, shape=(1, 2))
    assert len(received) == 3 and channel.findings == []


@pytest.mark.parametrize("mode", ["raise", "report"])
@pytest.mark.parametrize("kind,receiver", [(MASKED, "label"), (CIPHERTEXT, "data")])
def test_channel_refuses_a_mask_not_wider_than_its_value_whatever_sigma_says(keypair, mode,
                                                                              kind, receiver):
    """Even with σ = 0 (and in reporting mode), a declared mask no wider than the value it
    hides — mask_bits == value_bits, or narrower — is refused with LeakageError before any
    payload is made."""
    channel, send, received = stub_channel(sigma=0, mode=mode)
    made = []

    def make(party):
        made.append(party)
        return np.array([1], dtype=object)

    sender = "label" if receiver == "data" else "data"
    for mask_bits, value_bits in ((64, 64), (30, 64)):
        with pytest.raises(LeakageError, match="no wider than what it hides"):
            send(4, sender, receiver, "T", kind, make, shape=(1,), mask_bits=mask_bits,
                 value_bits=value_bits)
    assert made == [] and received == [] and channel.messages == []
    # one bit wider passes the width check at σ = 0
    send(4, "data", "label", "T", MASKED, masked(np.array([1]), 65), shape=(1,), mask_bits=65,
         value_bits=64)
    assert len(received) == 1


# ----------------------------------------------------------------------------------------------
# The import circle stays broken
# ----------------------------------------------------------------------------------------------
def project_modules() -> dict:
    """Every module of the project (not the tests, not the notebooks): name -> path. The top
    level's files, and each folder that is a package with its files."""
    modules = {path.stem: path for path in sorted(ROOT.glob("*.py"))}
    for init in sorted(ROOT.glob("*/__init__.py")):
        package = init.parent.name
        if package in ("tests", "notebooks"):
            continue
        modules[package] = init
        for path in sorted(init.parent.glob("*.py")):
            if path.name != "__init__.py":
                modules[f"{package}.{path.stem}"] = path
    return modules


def import_graph() -> dict:
    """module -> the project modules it imports, from the source (ast): every import, at top
    level or inside a function, a class or an ``if``; ``from speed import kernels`` is an edge
    to speed.kernels (and ``from plan import X`` one to plan)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        named = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                named |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: imports are absolute from the repo root"
                named.add(node.module)
                named |= {f"{node.module}.{alias.name}" for alias in node.names}
        targets = set()
        for target in named:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict):
    """One cycle of the graph as a list of modules (the first again at the end), or None."""
    state = {}  # absent: not seen; 1: on the current path; 2: done

    def walk(module, path):
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = walk(target, path + [target])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = walk(module, [module])
            if found:
                return found
    return None


def test_the_import_graph_sees_imports_inside_functions():
    """The walk must see lazy imports, or the two tests below prove nothing: acml.main loads
    the CLI, and the CLI's bench command loads the benchmark, both inside a function."""
    graph = import_graph()
    assert "tools.cli" in graph["acml"] and "tools.estimator" in graph["acml"]
    assert "tools.bench" in graph["tools.cli"] and "speed.kernels" in graph["tools.cli"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_outside_tools_imports_acml():
    """acml.py is the front door: no lower layer (the core, speed/, network/, attacks/,
    jobs/) imports it, not even inside a function."""
    graph = import_graph()
    importers = sorted(name for name, targets in graph.items() if "acml" in targets)
    assert [name for name in importers if not name.startswith("tools.")] == []


def test_the_project_imports_form_no_cycle():
    """No circle at all, counting the imports inside functions: each module can be read (and
    loaded) after the modules it imports."""
    assert find_cycle(import_graph()) is None


def test_importing_acml_loads_none_of_bench_audit_cli_transport():
    """The same, as Python sees it: a fresh interpreter that imports acml has none of them."""
    code = ("import sys, acml; print(sorted({'tools.bench', 'attacks.audit', 'tools.cli', "
            "'network.transport'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


# ----------------------------------------------------------------------------------------------
# The fast paths change no bit
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast_path_runs(keypair):
    train_set, _ = small_split(40)
    with ThreadPoolExecutor(2) as executor:
        runs = {"packed": acml.train(train_set, None, config(packing=True), keypair=keypair),
                "unpacked": acml.train(train_set, None, config(packing=False), keypair=keypair),
                "packed, executor": acml.train(train_set, None, config(packing=True),
                                               keypair=keypair, executor=executor)}
    return runs


def _joint(result):
    joint = result.label_party.weight_share + result.data_party.noise_acc
    return joint.scale, [int(v) for v in joint.values.ravel()]


def _assert_same_bits(first, second):
    assert _joint(first) == _joint(second)
    for mine, theirs in zip(first.label_party.model.layers, second.label_party.model.layers):
        assert np.array_equal(mine.b, theirs.b)
        if mine.W is not None:
            assert np.array_equal(mine.W, theirs.W)
    assert first.losses == second.losses


def test_packed_and_unpacked_runs_give_bit_identical_weights(fast_path_runs):
    """On one key pair and one init seed, packing changes the cost only: W_B + ε_acc is the very
    same integers, the layers above the same floats (while the shares themselves differ)."""
    packed, unpacked = fast_path_runs["packed"], fast_path_runs["unpacked"]
    assert packed.label_party.public.packing is not None
    assert unpacked.label_party.public.packing is None
    _assert_same_bits(packed, unpacked)
    assert not np.array_equal(packed.label_party.weight_share.values,
                              unpacked.label_party.weight_share.values)


def test_an_executor_gives_the_same_bits_as_this_process(fast_path_runs):
    """Running the exponentiations on an executor (two threads) changes where they run, not a
    single bit of W_B + ε_acc or of the layers above."""
    _assert_same_bits(fast_path_runs["packed"], fast_path_runs["packed, executor"])


# ----------------------------------------------------------------------------------------------
# No module reaches into another module's private names
# ----------------------------------------------------------------------------------------------
PACKAGES = sorted(path.parent.name for path in ROOT.glob("*/__init__.py")
                  if path.parent.name != "tests")
PROJECT_MODULES = ({path.stem for path in ROOT.glob("*.py")} | set(PACKAGES)
                   | {f"{package}.{path.stem}" for package in PACKAGES
                      for path in (ROOT / package).glob("*.py")})


def _is_private(attribute):
    return attribute.startswith("_") and not (attribute.startswith("__")
                                              and attribute.endswith("__"))


def foreign_private_accesses(tree):
    """(line, source text) of every reach into another module's private name: ``X._y`` where
    X is bound by an import of a project module in this file (a module, a class, any object),
    and ``X.Y._z`` (any depth) where X is an imported project module.  ``self._y``,
    ``cls._y``, dunders and the standard library's names are not flagged."""
    imported, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in PROJECT_MODULES:
                    bound = alias.asname or alias.name.split(".")[0]
                    imported.add(bound)
                    modules.add(bound)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 \
                and node.module in PROJECT_MODULES:
            for alias in node.names:
                bound = alias.asname or alias.name
                imported.add(bound)
                if f"{node.module}.{alias.name}" in PROJECT_MODULES:
                    modules.add(bound)
    found = [(node.lineno, f"from {node.module} import {alias.name}")
             for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.level == 0
             and node.module in PROJECT_MODULES
             for alias in node.names if _is_private(alias.name)]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        root, depth = node.value, 1
        while isinstance(root, ast.Attribute):
            root, depth = root.value, depth + 1
        if isinstance(root, ast.Name) and (root.id in modules
                                           or (depth == 1 and root.id in imported)):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_private_name_check_flags_reaches_and_spares_own_names():
    """The check below can fail: it flags ``PrivateKey._x``, ``paillier._y``,
    ``paillier.PrivateKey._z``, ``kernels._w`` (a module from a package) and a private name
    imported by name, and spares ``self._a``, ``cls._b``, a dunder and the standard library's
    ``os._exit``."""
    source = "\n".join([
        "import os", "import paillier", "from paillier import PrivateKey",
        "from speed import kernels", "from attacks.audit import _helper",
        "PrivateKey._x", "paillier._y", "paillier.PrivateKey._z", "kernels._w",
        "self._a", "cls._b", "paillier.__name__", "os._exit", "PrivateKey.__init__"])
    flagged = [text for _, text in foreign_private_accesses(ast.parse(source))]
    assert sorted(flagged) == sorted(["PrivateKey._x", "paillier._y", "paillier.PrivateKey._z",
                                      "kernels._w", "from attacks.audit import _helper"])


def test_no_module_uses_another_modules_private_names():
    """Every module (top level and the folders, not the tests) reaches another module only
    through its public names: no ``imported._name``, no ``module.Class._name``."""
    files = sorted(ROOT.glob("*.py")) + sorted(path for package in PACKAGES
                                               for path in (ROOT / package).glob("*.py"))
    assert len(files) > 20 and ROOT / "speed" / "kernels.py" in files
    reaches = [f"{path.relative_to(ROOT)} line {line}: {text}" for path in files
               for line, text in foreign_private_accesses(parse(path.relative_to(ROOT)))]
    assert reaches == []
