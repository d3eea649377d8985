"""Property tests: malformed manifests (predict.py --manifest, python -m siqa.nss) and
malformed configs (files and key=value overrides) give a result or a UserError of one line
naming the file (or the key) at fault, never another exception (which an entry point would
print as a traceback)."""
import string

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from siqa import config
from siqa.errors import UserError

FIELDS = ["left", "right", "sbs", "score", "name", "", "Left", "left ", "ref"]
cells = st.one_of(st.text(max_size=12), st.sampled_from(["a.png", "", "nan", "1e309", "../x.png",
                                                         "/dev/null", "a,b", '"', "\x00"]))


@st.composite
def csv_texts(draw):
    header = draw(st.lists(st.sampled_from(FIELDS), max_size=5))
    rows = draw(st.lists(st.lists(cells, max_size=6), max_size=5))
    sep = draw(st.sampled_from([",", ";", "\t"]))
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    text = "\n".join(lines)
    if draw(st.booleans()):
        text = draw(st.text(max_size=60))  # anything at all
    return text


def assert_names_the_culprit(err, *culprits):
    """A UserError is one line naming one of the culprits (a file's name, an override)."""
    message = str(err).strip()
    assert message and "\n" not in message, message
    named = [form for c in culprits for form in (c, c.split("=")[0], c.split("=")[0].strip())]
    assert any((c and c in message) or repr(c) in message for c in named), (message, culprits)


def dotted_keys(tree, prefix=""):
    """Every key of a nested config document, dotted, with the sections above it."""
    keys = []
    for key, value in tree.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += dotted_keys(value, f"{prefix}{key}.")
    return keys


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(text=csv_texts(), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_predict_manifest_gives_pairs_or_user_error(tmp_path, text, encoding):
    from siqa.inference.manifest import read_manifest

    path = tmp_path / "m.csv"
    try:
        path.write_bytes(text.encode(encoding, errors="replace"))
    except UnicodeEncodeError:
        return
    try:
        read_manifest(path)
    except UserError as err:
        assert_names_the_culprit(err, path.name)


@SETTINGS
@given(text=csv_texts())
def test_nss_pairs_csv_gives_pairs_or_user_error(tmp_path, text):
    from siqa.nss.__main__ import read_pairs_csv

    path = tmp_path / "p.csv"
    path.write_text(text, errors="replace")
    try:
        read_pairs_csv(path)
    except UserError as err:
        assert_names_the_culprit(err, path.name)


SCHEMA = config.load_config()
KEYS = [k for k in config.flatten(SCHEMA)] + ["train.epochz", "train", "dataset.name.x", "", "a..b"]
values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=10), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@st.composite
def config_docs(draw):
    doc = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        node, parts = doc, key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[parts[-1]] = draw(values)
    return doc


@SETTINGS
@given(doc=config_docs(), raw=st.booleans(), text=st.text(max_size=40))
@example(doc={"": None}, raw=False, text="")  # an empty key: named quoted, with its file
def test_config_file_gives_a_config_or_user_error(tmp_path, doc, raw, text):
    path = tmp_path / "c.yaml"
    path.write_text(text if raw else yaml.safe_dump(doc))
    try:
        config.load_config(path)
    except UserError as err:  # a file that is not a mapping: the file; a bad entry: its key
        assert_names_the_culprit(err, path.name, *([] if raw else dotted_keys(doc)))


@SETTINGS
@given(overrides=st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS),
              st.one_of(st.text(alphabet=string.printable, max_size=10), st.sampled_from(
                  ["[", "{a: 1}", "null", "1e999", "-1", "0x10", "yes", "[0.6,0.2]", "!!python/object:os.system"]))),
    st.text(max_size=10)), max_size=4))
def test_overrides_give_a_config_or_user_error(overrides):
    try:
        config.load_config(overrides=overrides)
    except UserError as err:
        assert_names_the_culprit(err, *overrides)
