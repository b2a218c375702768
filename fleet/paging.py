"""Query parameters of the device listing (shared by the API and the dashboard) and page headers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, Response
from fastapi.exceptions import RequestValidationError

from fleet.devicequery import DEFAULT_LIMIT, MAX_LIMIT, SORTS, STATES, DeviceFilter


def device_filter(
    role: Annotated[str | None, Query(max_length=64, description="Role, e.g. camera or kiosk.")] = None,
    site: Annotated[str | None, Query(max_length=64, description="Site/ward code, e.g. hn-gbt.")] = None,
    status: Annotated[
        str | None, Query(description=f"State: {', '.join(STATES)}.", pattern="^(" + "|".join(STATES) + ")$")
    ] = None,
    version: Annotated[str | None, Query(max_length=64, description="Agent version.")] = None,
    health: Annotated[
        str | None,
        Query(max_length=32, description="Alert kind that must be open (e.g. overheat), or 'any'."),
    ] = None,
    q: Annotated[str | None, Query(max_length=64, description="Part of the device id.")] = None,
    online: Annotated[bool | None, Query(description="Only online (true) or not online (false).")] = None,
    sort: Annotated[
        str,
        Query(
            description=f"Sort key ({', '.join(SORTS)}); a leading '-' sorts descending.",
            pattern="^-?(" + "|".join(SORTS) + ")$",
        ),
    ] = "id",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="Devices to skip.")] = 0,
) -> DeviceFilter:
    refuse_nul(role=role, site=site, version=version, health=health, q=q)
    try:
        key, descending = DeviceFilter.parse_sort(sort)
    except ValueError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "sort"), "msg": str(exc), "input": sort}]
        ) from exc
    return DeviceFilter(
        role=role or None,
        site=site or None,
        state=status or None,
        version=version or None,
        health=health or None,
        q=q or None,
        online=online,
        sort=key,
        descending=descending,
        limit=limit,
        offset=offset,
    )


def refuse_nul(**values: str | None) -> None:
    """NUL characters cannot be searched for (PostgreSQL text refuses them): a 422 shaped like
    every other validation error, naming the parameter."""
    errors = [
        {"type": "value_error", "loc": ("query", name), "msg": "cannot contain NUL characters", "input": v}
        for name, v in values.items()
        if v is not None and "\x00" in v
    ]
    if errors:
        raise RequestValidationError(errors)


def set_page_headers(request: Request, response: Response, flt: DeviceFilter, count: int, total: int) -> None:
    response.headers["X-Total-Count"] = str(total)
    following = flt.offset + count
    if flt.limit is not None and count == flt.limit and following < total:
        url = request.url.include_query_params(offset=following, limit=flt.limit)
        response.headers["X-Next-Offset"] = str(following)
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
