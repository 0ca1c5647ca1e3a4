"""Contract-level metadata: ``GET /metadata/contract/<collection>``, the document a
collection's ``contractURI()`` names. Built once per app from the settings (no Redis),
served with the token documents' headers: ETag, Cache-Control, CORS, 304."""

from flask import Response, current_app, request
from flask_smorest import Blueprint

from crew7.metadata.views import document_headers, etag_of, not_modified
from crew7.schemas.contract import ContractMetadataSchema
from crew7.services.contract import COLLECTIONS, render_contract_documents

blp = Blueprint(
    "contract",
    __name__,
    url_prefix="/metadata/contract",
    description="Collection-level (contract) metadata, OpenSea's contractURI format (public)",
)

_DOCUMENTS = "crew7.contract_documents"


@blp.record_once
def _build_documents(state):
    """Each app's documents and their ETags, built once when it registers."""
    state.app.extensions[_DOCUMENTS] = {
        collection: (body, etag_of(body))
        for collection, body in render_contract_documents(state.app.config).items()
    }


@blp.get(f"/<any({', '.join(COLLECTIONS)}):collection>")
@blp.alt_response(200, schema=ContractMetadataSchema, description="The collection's document")
def contract_metadata(collection):
    """A collection's contract-level metadata (crews or agents)."""
    body, etag = current_app.extensions[_DOCUMENTS][collection]
    headers = document_headers(current_app.extensions["crew7.cache_control"], etag)
    if not_modified(request.headers.get("If-None-Match"), etag):
        return Response(status=304, headers=headers)
    return Response(body, mimetype="application/json", headers=headers)
