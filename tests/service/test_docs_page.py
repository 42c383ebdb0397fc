"""``/docs`` works offline: Swagger UI comes from the installed package, never from a CDN."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_docs_page_loads_swagger_ui_from_this_server_only(client: TestClient) -> None:
    page = client.get("/docs", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/docs/assets/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
    assert "https://" not in page.text and "http://" not in page.text  # nothing from elsewhere
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text[:200_000]
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_an_unknown_docs_asset_is_a_404_problem(client: TestClient) -> None:
    response = client.get("/docs/assets/../../../etc/passwd")
    assert response.status_code == 404
    missing = client.get("/docs/assets/index.html")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
