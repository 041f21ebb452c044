"""compat's way of replacing a RecBole method: the replacement gets the original, a second
install changes nothing, and the original stays reachable."""

from recbole_vlm4rec.method_patch import replaces


class _Owner:
    def greet(self, name: str) -> str:
        return f"hello {name}"


def test_replacement_wraps_the_original_once() -> None:
    original = _Owner.greet
    calls = []

    def shout(original_greet, self, name):
        calls.append(name)
        return original_greet(self, name).upper()

    installed = replaces(_Owner, "greet")(shout)
    assert _Owner.greet is installed and installed._original is original
    assert installed._vlm4rec_shim and installed.__name__ == "greet"
    assert _Owner().greet("ann") == "HELLO ANN" and calls == ["ann"]

    again = replaces(_Owner, "greet")(lambda original_greet, self, name: "replaced twice")
    assert again is installed and _Owner.greet is installed
    assert _Owner().greet("bo") == "HELLO BO"
    assert _Owner.greet._original(_Owner(), "cy") == "hello cy"
