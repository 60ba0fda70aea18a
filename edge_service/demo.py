"""The demo page at ``/`` (static files shipped in the package, no build step, no CDN) and the two small
JSON routes it needs beyond ``/v1/classify`` and ``/v1/info``: ``/v1/cuts`` and ``/v1/plan``."""

from __future__ import annotations

import math
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from edge_service.cut_selector import CutSelector
from edge_service.state import EdgeState, EdgeStateDep
from service_core.openapi import problem_responses
from shared.codecs import ACTIVATION_CODECS, COMPACT_CODECS, IMAGE_CODECS
from shared.errors import UnprocessableContent
from shared.planning import Profile, plan
from shared.splitting import INPUT_CUT, OUTPUT_CUT
from shared.units import parse_bandwidth, parse_duration

__all__ = ["DEMO_ASSETS", "PAGE_HEADERS", "CutListing", "LinkPlan", "demo_router"]

DEMO_ASSETS = "/demo-assets"
_ASSETS = {"demo.js": "text/javascript; charset=utf-8", "demo.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # NOTE: the page loads its own script and style sheet only: no inline script or style (the script sets
    # styles through the CSSOM), no plugin, no other origin, no framing; its preview is a blob: image
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
"""What the demo page and its assets are served with."""


class CutEntry(BaseModel):
    index: int = Field(description="Position in execution order.")
    name: str
    single_tensor: bool
    bytes_fp32: int = Field(description="Bytes of the tensors alive across the cut, per image, as fp32.")
    head_flops_share: float = Field(description="Share of the model's FLOPs run on the edge at this cut.")


class CutListing(BaseModel):
    """``GET /v1/cuts``: where this edge can split its model and which codecs fit."""

    model: str
    cut: str = Field(description="The edge's current cut.")
    codec: str = Field(description="The edge's current codec (none for cut output).")
    cuts: list[CutEntry] = Field(description="Every cut (``single=true``: only single-tensor ones), in order.")
    activation_codecs: list[str]
    image_codecs: list[str] = Field(description="Codecs for cut 'input' (the edge sends the image).")
    profiles: bool = Field(description="Whether edge and cloud profiles are loaded (``/v1/plan`` answers).")


class PlanPoint(BaseModel):
    index: int
    cut: str
    codec: str
    latency_ms: float
    bytes_per_image: float


class LinkPlan(BaseModel):
    """``GET /v1/plan``: the planner's best codec at each cut for a link, in execution order."""

    available: bool = Field(description="False when no profiles are loaded (then ``points`` is empty).")
    reason: str | None = None
    bandwidth_bps: float | None = None
    rtt_ms: float | None = None
    points: list[PlanPoint] = Field(default_factory=list)


def _profiles(state: EdgeState) -> tuple[Profile, Profile] | None:
    if isinstance(state.routes, CutSelector):
        return state.routes.edge, state.routes.cloud
    edge, cloud = state.settings.edge_profile, state.settings.cloud_profile
    if edge is None or cloud is None or not edge.is_file() or not cloud.is_file():
        return None
    return Profile.load(edge), Profile.load(cloud)


def _page() -> str:
    return (resources.files("edge_service") / "static" / "index.html").read_text(encoding="utf-8")


demo_router = APIRouter()


@demo_router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def demo_page() -> HTMLResponse:
    """The demo page: classify an image in the browser and see what each cut and codec does."""
    return HTMLResponse(_page(), headers=PAGE_HEADERS)


@demo_router.get("/v1/cuts", response_model=CutListing, tags=["inference"], responses=problem_responses(503))
async def cuts(
    state: EdgeStateDep,
    single: Annotated[bool, Query(description="Only cuts across which one tensor is alive.")] = True,
) -> CutListing:
    """Where this edge can split its model (for `cut=` on classify) and which codecs fit."""
    model, route = state.model, state.routes.route
    listed = [c for c in model.graph.cuts if c.single_tensor or not single or c.name in (INPUT_CUT, OUTPUT_CUT)]
    return CutListing(
        model=model.loaded.name,
        cut=route.cut.name,
        codec=route.codec or "none",
        cuts=[
            CutEntry(
                index=c.index,
                name=c.name,
                single_tensor=c.single_tensor,
                bytes_fp32=c.bytes_fp32,
                head_flops_share=round(c.head_flops_share, 6),
            )
            for c in listed
        ],
        activation_codecs=[f"{c}{z}" for c in ACTIVATION_CODECS for z in ("", "+zstd")] + list(COMPACT_CODECS),
        image_codecs=list(IMAGE_CODECS),
        profiles=_profiles(state) is not None,
    )


@demo_router.get("/v1/plan", response_model=LinkPlan, tags=["inference"], responses=problem_responses(422, 503))
async def link_plan(
    state: EdgeStateDep,
    bandwidth: Annotated[str, Query(description="Uplink rate with a unit: 20mbit, 1gbit/s, 2.5MBps.")] = "20mbit",
    rtt: Annotated[str, Query(description="Round-trip time with a unit: 30ms, 0.03s.")] = "30ms",
) -> LinkPlan:
    """Predicted latency and bytes of the best codec at each cut, for a link (needs loaded profiles)."""
    try:
        bandwidth_bps, rtt_s = parse_bandwidth(bandwidth), parse_duration(rtt)
    except ValueError as exc:
        raise UnprocessableContent(str(exc)) from exc
    profiles = _profiles(state)
    if profiles is None:
        return LinkPlan(
            available=False, reason="no profiles loaded: start the edge with --edge-profile and --cloud-profile"
        )
    edge, cloud = profiles
    rows = plan(edge, cloud, bandwidth_bps=bandwidth_bps, rtt_s=rtt_s, max_logit_error=state.settings.max_logit_error)
    if not all(math.isfinite(row.latency_ms) for row in rows):
        # NOTE: a rate of 1e-306 bit/s overflows the predicted times (JSON would say null)
        raise UnprocessableContent(
            f"the latencies over a link of {bandwidth!r} and RTT {rtt!r} are too large to predict (not finite)"
        )
    order = {c.name: c.index for c in edge.cuts}
    best: dict[str, Any] = {}
    for row in rows:  # best first: the first row of a cut is its best codec
        best.setdefault(row.cut, row)
    points = [
        PlanPoint(
            index=order[r.cut],
            cut=r.cut,
            codec=r.codec or "none",
            latency_ms=r.latency_ms,
            bytes_per_image=r.bytes_per_image,
        )
        for r in sorted(best.values(), key=lambda r: order[r.cut])
    ]
    return LinkPlan(available=True, bandwidth_bps=bandwidth_bps, rtt_ms=rtt_s * 1000, points=points)


@demo_router.get(DEMO_ASSETS + "/{name}", include_in_schema=False)
async def demo_asset(name: str) -> Response:
    """The page's script and style sheet (package data under ``edge_service/static``)."""
    media = _ASSETS.get(name)
    if media is None:
        raise HTTPException(404, f"no demo asset {name!r}")
    body = (resources.files("edge_service") / "static" / name).read_bytes()
    return Response(body, media_type=media, headers=PAGE_HEADERS)
