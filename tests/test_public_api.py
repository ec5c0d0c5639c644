"""The public names resolve, and `import medres` / `medres.config` stay free of torch."""

import subprocess
import sys

import medres
import medres.data


def test_every_lazy_name_resolves():
    for name in medres._LAZY:
        assert getattr(medres, name) is not None, name
    for name in medres.data._LAZY:
        assert getattr(medres.data, name) is not None, name


def test_import_is_light():
    code = "import medres, medres.config, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_name_is_an_attribute_error():
    try:
        medres.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")
