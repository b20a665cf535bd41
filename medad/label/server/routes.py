"""The endpoints medad answers itself, in place of MONAI Label 0.8.5's (same paths, same answers when all is well).

Replaced, for safety and responsiveness (:func:`install_routes` removes MONAI Label's route and adds these):

- ``POST /infer/{model}``: ``params`` must be a JSON object; ``image`` must be a datastore id (a path is refused
  with 400, never opened); an uploaded ``file``/``label`` must be a readable volume within the size limit; the
  inference runs in :class:`~medad.label.server.queue.InferQueue` (worker threads), so the server keeps answering;
- ``PUT /datastore/`` and ``PUT /datastore/image``, ``PUT /datastore/label``, ``PUT /datastore/{image,label}/info``:
  checked ids, tags, JSON and uploads (:mod:`medad.label.datastore.ids`);
- ``POST /activelearning/{strategy}``, ``POST /train/{model}``, ``POST /scoring/{method}``: an unknown name is 404
  (MONAI Label answered 500, or "SUBMITTED" for an unknown trainer); ``run_sync`` training runs off the event loop.

Added: ``GET /medad/queue`` (running and waiting inferences with position and progress), ``GET /medad/legend``
(the grade colours and thresholds), ``GET /medad/colormap.ctbl`` (the heat ramp as a 3D Slicer colour table),
``GET /medad/slicer/overlay.py?image=<id>`` (the script that shows the continuous map over the study in Slicer),
``POST /medad/mark_normal?image=<id>`` (one step: the study is normal).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Optional

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import remove_file

from .errors import BadRequest, NotFound

__all__ = ["install_routes", "parse_json_object", "router"]

logger = logging.getLogger(__name__)

router = APIRouter()
_USER = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
_ANNOTATOR = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
_ADMIN = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))
#: Request keys a client's ``params`` may not set (the server sets them).
_RESERVED = {"model", "image", "image_id", "session", "label", "medad_trusted_image", "medad_base_url", "device",
             "description"}


def parse_json_object(text: Optional[str], what: str = "params") -> dict[str, Any]:
    """``text`` parsed as a JSON object ({} for empty); anything else is a 400 naming ``what``."""
    if text is None or not str(text).strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"'{what}' is not valid JSON ({e.msg} at character {e.pos}). Send a JSON object, e.g. "
                         f"{what}={{\"result_extension\": \".nrrd\"}}.") from None
    if not isinstance(value, dict):
        raise BadRequest(f"'{what}' must be a JSON object ({{\"key\": value, ...}}), not {type(value).__name__} "
                         f"{str(text)[:60]}.")
    return value


def _instance():
    return app_instance()


def _max_bytes(instance) -> int:
    cfg = getattr(instance, "label_config", None)
    return cfg.max_upload_bytes if cfg is not None else 512 << 20


def _save_upload(upload: UploadFile, allowed, max_bytes: int, what: str, background: BackgroundTasks) -> str:
    """Copy an upload to a temporary file named with its checked suffix; returns the path (removed after the
    response)."""
    from ..datastore.ids import check_upload, upload_suffix
    from .errors import UnsupportedMedia

    suffix = upload_suffix(upload.filename, allowed)
    if suffix is None:
        raise UnsupportedMedia(f"{what} {upload.filename or '(no file name)'!r}: not a supported file type; send one "
                               f"of {', '.join(allowed)}.")
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="medad_upload_")
    background.add_task(remove_file, path)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(upload.file, out)
    check_upload(path, upload.filename, allowed, max_bytes, what)
    return path


# ---------------------------------------------------------------------------------------------------------- infer
@router.post("/infer/{model}", summary="Run inference (medad: checked input, queued off the event loop)",
             tags=["Infer"])
async def infer(http: Request, background_tasks: BackgroundTasks, model: str, image: str = "", session_id: str = "",
                params: str = Form("{}"), file: UploadFile = File(None), label: UploadFile = File(None),
                output: Optional[str] = None, user: User = _USER):
    from monailabel.endpoints.infer import send_response

    from ..datastore.ids import LABEL_SUFFIXES, STUDY_SUFFIXES

    instance = _instance()
    if output not in (None, "image", "json", "all", "dicom_seg"):
        raise BadRequest(f"output={output!r}: use image, json, all or dicom_seg.")
    p = parse_json_object(params)
    instance.check_model(model)
    if not file and not image and not session_id:
        raise BadRequest("No input given: pass ?image=<image id from /datastore/?output=all>, or upload a file.")
    request: dict[str, Any] = {k: v for k, v in p.items() if k not in _RESERVED}
    request.update({"model": model, "image": image, "medad_base_url": str(http.base_url).rstrip("/")})
    max_bytes = _max_bytes(instance)
    if file:
        request["image"] = request["medad_trusted_image"] = _save_upload(
            file, STUDY_SUFFIXES, max_bytes, "uploaded image", background_tasks)
    elif session_id:
        session = instance.sessions().get_session(session_id)
        if not session:
            raise NotFound(f"session {session_id!r} does not exist (or expired); create one with PUT /session/.")
        request["image"] = request["medad_trusted_image"] = session.image
        request["session"] = session.to_json()
    if label:
        request["label"] = _save_upload(label, LABEL_SUFFIXES, max_bytes, "uploaded label", background_tasks)
    shown = image or (file.filename if file else session_id)
    result, job = await instance.infer_queue(model).run(lambda: instance.checked_infer(request), model,
                                                        str(shown))

    if output == "dicom_seg":
        from ..datastore.dicomweb import MedadDICOMWebDatastore, nifti_to_dicom_seg

        if not isinstance(instance.datastore(), MedadDICOMWebDatastore):
            raise BadRequest("output=dicom_seg needs a DICOMweb datastore (--studies http://.../dicom-web); use "
                             "output=image or json.")
        if p.get("label_info") is None:
            raise BadRequest("output=dicom_seg needs params.label_info, e.g. [{\"name\": \"low\"}, ...].")
        from medad.io import volume_source

        result["dicom_seg"] = await run_in_threadpool(
            nifti_to_dicom_seg, volume_source(instance.datastore().get_image_uri(image)),
            result.get("file") or result.get("label"), p["label_info"])
        background_tasks.add_task(remove_file, result["dicom_seg"])
    response = send_response(instance.datastore(), result, output, background_tasks)
    if not isinstance(response, Response):
        response = JSONResponse(response)
    response.headers["X-Medad-Queue-Wait"] = f"{job.waited:.3f}"
    response.headers["X-Medad-Run-Time"] = f"{job.run_time:.3f}"
    return response


# ---------------------------------------------------------------------------------------------------------- datastore
async def _add_image(background_tasks: BackgroundTasks, image: Optional[str], params: str, file: UploadFile,
                     user: User):
    from ..datastore.ids import STUDY_SUFFIXES, check_id

    instance = _instance()
    info = parse_json_object(params)
    if image is not None:
        check_id(image)
    path = _save_upload(file, STUDY_SUFFIXES, _max_bytes(instance), "uploaded study", background_tasks)
    if user and user.username:
        info["user"] = user.username
    if not image:
        from medad.io.discovery import safe_name

        from ..datastore.ids import upload_suffix

        name = os.path.basename(file.filename or "study")
        image = safe_name(name[: len(name) - len(upload_suffix(name, STUDY_SUFFIXES) or "")])
    image_id = await run_in_threadpool(instance.datastore().add_image, image, path, info)
    return {"image": image_id}


@router.put("/datastore/", include_in_schema=False, tags=["Datastore"])
async def add_image_legacy(background_tasks: BackgroundTasks, image: Optional[str] = None, params: str = Form("{}"),
                           file: UploadFile = File(...), user: User = _ANNOTATOR):
    return await _add_image(background_tasks, image, params, file, user)


@router.put("/datastore/image", summary="Upload a study (medad: checked id, type and size)", tags=["Datastore"])
async def add_image(background_tasks: BackgroundTasks, image: Optional[str] = None, params: str = Form("{}"),
                    file: UploadFile = File(...), user: User = _ANNOTATOR):
    return await _add_image(background_tasks, image, params, file, user)


@router.put("/datastore/label", summary="Save a label (medad: checked id, tag, type and size)", tags=["Datastore"])
async def save_label(background_tasks: BackgroundTasks, image: str, params: str = Form("{}"), tag: str = "final",
                     label: UploadFile = File(...), user: User = _ANNOTATOR):
    from ..datastore.ids import LABEL_SUFFIXES, check_id, check_tag

    instance = _instance()
    check_id(image)
    check_tag(tag or "final")
    info = parse_json_object(params)
    path = _save_upload(label, LABEL_SUFFIXES, _max_bytes(instance), "uploaded label", background_tasks)
    if user and user.username:
        info["user"] = user.username
    store = instance.datastore()
    if image not in store.list_images():
        raise NotFound(f"Image {image!r} is not in the datastore (GET /datastore/?output=all lists the ids).")
    label_id = await run_in_threadpool(store.save_label, image, path, tag or "final", info)
    res = instance.on_save_label(image, label_id) or {}
    res.update({"image": image, "label": label_id})
    return res


@router.put("/datastore/image/info", summary="Update image info (medad: checked JSON)", tags=["Datastore"])
async def put_image_info(image: str, info: str = Form("{}"), user: User = _ANNOTATOR):
    data = parse_json_object(info, "info")
    data["user"] = user.username
    return _instance().datastore().update_image_info(image, data)


@router.put("/datastore/label/info", summary="Update label info (medad: checked JSON)", tags=["Datastore"])
async def put_label_info(label: str, tag: str, info: str = Form("{}"), user: User = _ANNOTATOR):
    data = parse_json_object(info, "info")
    data["user"] = user.username
    return _instance().datastore().update_label_info(label, tag, data)


@router.put("/datastore/updatelabelinfo", include_in_schema=False, tags=["Datastore"])
async def update_label_info_legacy(label: str, tag: str, params: str = Form("{}"), user: User = _ANNOTATOR):
    data = parse_json_object(params)
    data["user"] = user.username
    return _instance().datastore().update_label_info(label, tag, data)


# ---------------------------------------------------------------------------------------------------------- tasks
def _known(name: str, names, what: str, where: str) -> None:
    if name not in names:
        raise NotFound(f"No {what} {name!r}; this server has {sorted(names)} (see {where}).")


@router.post("/activelearning/{strategy}", summary="Next sample (medad: unknown strategy -> 404)",
             tags=["ActiveLearning"])
async def next_sample(strategy: str, params: Optional[dict] = None, user: User = _USER):
    from monailabel.endpoints.activelearning import sample

    _known(strategy, _instance()._strategies, "active-learning strategy", "/info 'strategies'")
    return await run_in_threadpool(sample, strategy, params, user.username)


@router.post("/train/{model}", summary="Train (medad: unknown trainer -> 404; run_sync off the event loop)",
             tags=["Train"])
async def train(model: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                enqueue: Optional[bool] = False, user: User = _ADMIN):
    from monailabel.endpoints.train import run_model

    _known(model, _instance()._trainers, "trainer", "/info 'trainers'")
    if run_sync:
        result = await run_in_threadpool(run_model, model, params, True, enqueue)
        await run_in_threadpool(_instance().detector_store.get)  # the new site checkpoint, before answering
        return result
    return run_model(model, params, False, enqueue)


@router.post("/scoring/{method}", summary="Scoring (medad: unknown method -> 404)", tags=["Scoring"])
async def scoring(method: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                  user: User = _ADMIN):
    from monailabel.endpoints.scoring import run_method

    _known(method, _instance()._scoring_methods, "scoring method", "/info 'scoring'")
    return await run_in_threadpool(run_method, method, params, run_sync)


# ---------------------------------------------------------------------------------------------------------- medad
@router.get("/medad/queue", summary="Running and waiting inferences (position, progress)", tags=["medad"])
async def queue(user: User = _USER):
    return _instance().queue_status()


@router.get("/medad/legend", summary="Grade names, colours and thresholds (the legend of the maps)", tags=["medad"])
async def legend(user: User = _USER):
    from ..review import legend as make_legend

    return make_legend(_instance().detector_store.thresholds())


@router.get("/medad/colormap.ctbl", summary="The anomaly heat ramp as a 3D Slicer colour table", tags=["medad"])
async def colormap(user: User = _USER):
    from ..review import slicer_color_table

    return PlainTextResponse(slicer_color_table(_instance().detector_store.thresholds()),
                             headers={"Content-Disposition": 'attachment; filename="medad_anomaly.ctbl"'})


@router.get("/medad/slicer/overlay.py", summary="3D Slicer script: the continuous map over the study",
            tags=["medad"])
async def slicer_overlay(request: Request, image: str, user: User = _USER):
    from ..datastore.ids import check_id
    from ..review import slicer_overlay_script

    check_id(image)
    if image not in _instance().datastore().list_images():
        raise NotFound(f"Image {image!r} is not in the datastore.")
    base = str(request.base_url).rstrip("/")
    return PlainTextResponse(slicer_overlay_script(base, image, _instance().detector_store.thresholds()))


@router.post("/medad/mark_normal", summary="Mark a study normal (reviewer loop) in one step", tags=["medad"])
async def mark_normal(image: str, user: User = _ANNOTATOR):
    from ..review import mark_normal as do_mark

    instance = _instance()
    return await run_in_threadpool(do_mark, instance.datastore(), image, instance.label_config, user.username)


# ---------------------------------------------------------------------------------------------------------- install
def install_routes(app) -> None:
    """Remove MONAI Label's routes of the same path and method as :data:`router`'s (also inside included routers)
    and add :data:`router` (idempotent)."""
    from fastapi.routing import APIRoute

    if getattr(app.state, "medad_routes", False):
        return
    mine = {(r.path, m) for r in router.routes if isinstance(r, APIRoute) for m in r.methods}
    prefix = settings.MONAI_LABEL_API_STR or ""

    def prune(owner, routes, prefix_: str) -> None:
        kept = []
        for r in routes:
            original = getattr(r, "original_router", None)  # FastAPI >= 0.16x keeps included routers as branches
            if original is not None:
                prune(original, original.routes, prefix_)
                kept.append(r)
            elif isinstance(r, APIRoute) and any((r.path, m) in mine or (prefix_ + r.path, m) in mine
                                                 for m in r.methods):
                continue
            else:
                kept.append(r)
        if len(kept) != len(routes):
            routes[:] = kept
            if hasattr(owner, "_mark_routes_changed"):
                owner._mark_routes_changed()

    prune(app.router, app.router.routes, prefix)
    app.include_router(router, prefix=prefix)
    app.openapi_schema = None
    app.state.medad_routes = True
