"""The rooms board: every classroom with its gateway, devices and latest readings.

The page is static HTML; its script polls /api/gateways and /api/devices
every few seconds, so it refreshes by itself without reloading.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, redirect, render_template

from dashboards.auth import home_for, login_required

bp = Blueprint("board", __name__)


@bp.get("/")
@login_required
def rooms() -> Any:
    if g.user["role"] == "teacher" and home_for(g.user) != "/":
        return redirect(home_for(g.user))
    return render_template("rooms.html")
