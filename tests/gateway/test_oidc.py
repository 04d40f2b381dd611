"""The console's code exchange request, checked before anything reaches the provider."""

from __future__ import annotations

from typing import Any

import pytest

from aios.errors import InvalidInput
from gateway.oidc import check_exchange

HOST = "gw.example:8080"
GOOD = {"code": "c0de", "code_verifier": "A-z0._~" * 7, "redirect_uri": f"http://{HOST}/console/"}


def test_a_good_request_gives_code_verifier_and_redirect() -> None:
    assert check_exchange(GOOD, HOST) == (GOOD["code"], GOOD["code_verifier"],
                                          GOOD["redirect_uri"])
    https = {**GOOD, "redirect_uri": f"https://{HOST}/console/"}
    assert check_exchange(https, HOST)[2] == f"https://{HOST}/console/"


@pytest.mark.parametrize(("change", "error"), [
    ({"code": ""}, "code: the provider's code, 1 to 2048 characters"),
    ({"code": "x" * 2049}, "code: the provider's code, 1 to 2048 characters"),
    ({"code": 7}, "code: the provider's code, 1 to 2048 characters"),
    ({"code_verifier": "v" * 42}, "code_verifier: 43 to 128 characters"),
    ({"code_verifier": "v" * 129}, "code_verifier: 43 to 128 characters"),
    ({"code_verifier": "v" * 42 + "+"}, "code_verifier: 43 to 128 characters"),
    ({"redirect_uri": None}, "redirect_uri: this console's address"),
    ({"redirect_uri": "http://evil.example/console/"},
     "redirect_uri: must be this console, http(s)://gw.example:8080/console/, got "
     "'http://evil.example/console/'"),
    ({"redirect_uri": f"javascript://{HOST}/console/"}, "redirect_uri: must be this console"),
    ({"redirect_uri": f"http://{HOST}/elsewhere/"}, "redirect_uri: must be this console"),
    ({"redirect_uri": f"http://{HOST}/console/?next=evil"}, "redirect_uri: must be this console"),
    ({"redirect_uri": f"http://user@{HOST}/console/"}, "redirect_uri: must be this console"),
])
def test_bad_requests_are_refused_naming_the_field(change: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_exchange({**GOOD, **change}, HOST)
    assert info.value.message.startswith(error), info.value.message


@pytest.mark.parametrize("body", [None, [], "code", 3])
def test_a_body_that_is_no_object_is_refused(body: Any) -> None:
    with pytest.raises(InvalidInput, match="body: a JSON object with code, code_verifier"):
        check_exchange(body, HOST)
