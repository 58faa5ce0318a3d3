import contextlib

import httpx2
import pytest

from timely_server.app import ServerConfig, create_app

VIRTUAL = {"X-Timely-Clock": "virtual"}


@contextlib.asynccontextmanager
async def client_for(config, client=("127.0.0.1", 5000), headers=None):
    transport = httpx2.ASGITransport(app=create_app(config), client=client)
    async with httpx2.AsyncClient(
        transport=transport, base_url="http://test", headers=headers or {}
    ) as c:
        yield c


async def latency_of(client, tool="echo", arguments=None):
    body = {"arguments": arguments or {"text": "x"}, "session_id": "s"}
    response = await client.post(f"/tools/{tool}", json=body, headers=VIRTUAL)
    return response.json()["latency_s"]


async def test_latency_changes_at_run_time():
    async with client_for(ServerConfig(latency=1)) as client:
        assert await latency_of(client) == 1.0
        shown = (await client.get("/admin/latency")).json()
        assert shown["default"] == "constant:1.0" and shown["per_tool"] == {}
        assert shown["effective"]["echo"] == "constant:1.0"
        put = await client.put("/admin/latency", json={"default": "constant:2.5"})
        assert put.status_code == 200 and put.json()["default"] == "constant:2.5"
        assert await latency_of(client) == 2.5
        put = await client.put(
            "/admin/latency", json={"per_tool": {"calculator": {"kind": "constant", "seconds": 4}}}
        )
        effective = put.json()["effective"]
        assert effective["calculator"] == "constant:4.0" and effective["echo"] == "constant:2.5"
        assert await latency_of(client, "calculator", {"expression": "1"}) == 4.0
        await client.put("/admin/latency", json={"per_tool": {}})
        assert await latency_of(client, "calculator", {"expression": "1"}) == 2.5


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"default": "sometimes"}, 422, "Valid forms"),
        ({"per_tool": {"ecco": 1}}, 422, "Did you mean: echo"),
        ({"defaults": 1}, 422, "Extra inputs"),
        ({"default": -1}, 422, "seconds"),
    ],
)
async def test_bad_latency_updates_change_nothing(body, status, fragment):
    async with client_for(ServerConfig(latency=1)) as client:
        response = await client.put("/admin/latency", json=body)
        assert response.status_code == status, response.text
        assert fragment in response.json()["error"]["message"]
        assert await latency_of(client) == 1.0
        bad_json = await client.put("/admin/latency", content=b"{")
        assert bad_json.status_code == 400


async def test_faults_change_at_run_time():
    async with client_for(ServerConfig()) as client:
        assert (await client.get("/admin/faults")).json()["default"]["error_rate"] == 0.0
        put = await client.put("/admin/faults", json={"default": "error=1"})
        assert put.status_code == 200 and put.json()["default"]["error_rate"] == 1.0
        body = {"arguments": {"text": "x"}}
        response = await client.post("/tools/echo", json=body, headers=VIRTUAL)
        assert response.json()["fault"] == "error"
        bad = await client.put("/admin/faults", json={"default": "error=0.7,5xx=0.7"})
        assert bad.status_code == 422 and "at most 1" in bad.json()["error"]["message"]


async def test_without_tokens_admin_is_loopback_only():
    async with client_for(ServerConfig(), client=("10.1.2.3", 5000)) as remote:
        response = await remote.get("/admin/latency")
        assert response.status_code == 403 and response.json()["error"]["type"] == "forbidden"
        assert (await remote.put("/admin/latency", json={"default": 1})).status_code == 403
    async with client_for(ServerConfig(), client=("::1", 5000)) as local:
        assert (await local.get("/admin/latency")).status_code == 200


async def test_admin_token_guards_admin_and_opens_everything():
    config = ServerConfig(api_key="k", admin_token="adm")
    async with client_for(config, headers={"Authorization": "Bearer k"}) as user:
        assert (await user.get("/tools")).status_code == 200
        response = await user.put("/admin/latency", json={"default": 3})
        assert response.status_code == 403
    async with client_for(config, headers={"Authorization": "Bearer adm"}) as admin:
        assert (await admin.put("/admin/latency", json={"default": 3})).status_code == 200
        assert (await admin.get("/tools")).status_code == 200  # the admin token may do it all
    async with client_for(ServerConfig(admin_token="adm")) as anon:
        assert (await anon.get("/tools")).status_code == 200  # no api key: tools are open
        response = await anon.get("/admin/latency")
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


async def test_the_api_key_is_the_admin_credential_without_an_admin_token():
    config = ServerConfig(api_key="k")
    async with client_for(
        config, headers={"Authorization": "Bearer k"}, client=("10.0.0.9", 1)
    ) as c:
        assert (await c.put("/admin/latency", json={"default": 3})).status_code == 200
