"""Events, in the style of pymmcore-plus (psygnal signal groups).

- :class:`RunSignals`: a live run (``LiveRunner.events``,
  ``TrackingHandler.events``);
- :class:`TrainSignals`: a training (``train(..., events=...)``);
- :class:`CalibrationSignals`: a calibration acquisition
  (``run_calibration(..., events=...)``).

Every :class:`~axialtrack.live.LiveRunner` (and
:class:`~axialtrack.live.TrackingHandler`) has an ``events`` attribute, a
:class:`RunSignals` group. The CLI's status line, user scripts and the GUI all
subscribe to it::

    runner.events.status.connect(lambda m: print(m.status_line()))
    runner.events.batchAnalyzed.connect(on_rows)  # e.g. a focus lock
    runner.run(duration_s=60)

Which thread emits
------------------
The acquisition thread never runs a subscriber: it only moves frames. The
events come from

- the thread that called :meth:`~axialtrack.live.LiveRunner.run`:
  ``started``, ``status``, ``framesStored``, ``framesSkipped``, ``warning``,
  ``finished`` and ``failed`` (warnings raised in other threads are emitted at
  the next status period);
- the analysis thread: ``batchAnalyzed``, as soon as the rows of a batch are
  handed to the store (the earliest moment a controller can act on them; a slow
  subscriber delays the analysis, never the recording).

A subscriber that raises is logged and does not stop the run.

A Qt widget connects with ``thread="main"`` (psygnal queues the call to the Qt
main thread), or through a Qt signal of its own.
"""

from __future__ import annotations

from psygnal import Signal, SignalGroup

__all__ = ["CalibrationSignals", "RunSignals", "TrainSignals"]


class RunSignals(SignalGroup):
    """Signals of a live run.

    Attributes
    ----------
    started
        ``(path)``: the run store (:class:`pathlib.Path`) is open and the camera
        started.
    status
        ``(metrics)``: a :class:`~axialtrack.live.LiveMetrics` every
        ``RunnerConfig.status_interval_s``.
    batchAnalyzed
        ``(frames, rows)``: the frame indices of an analyzed batch (int64
        array) and its localization rows (a dict of equal-length column
        arrays, the localization table's columns; empty when the batch had
        none).
    framesStored
        ``(n)``: frames committed to the store so far, when it grew (at most
        once per status period).
    framesSkipped
        ``(frames)``: indices (int64 array) of the frames the analysis skipped
        since the last emission (it could not keep up; ``axialtrack localize``
        fills them in); at most once per status period.
    warning
        ``(message)``: a one-line warning (also in ``LiveMetrics.warnings``).
    finished
        ``(metrics)``: the run is over and its store closed; the final
        :class:`~axialtrack.live.LiveMetrics`.
    failed
        ``(error)``: the run stopped on this exception (``run()`` raises it
        once the store is closed).
    """

    started = Signal(object)
    status = Signal(object)
    batchAnalyzed = Signal(object, object)
    framesStored = Signal(int)
    framesSkipped = Signal(object)
    warning = Signal(str)
    finished = Signal(object)
    failed = Signal(object)


class TrainSignals(SignalGroup):
    """Signals of a training (:func:`axialtrack.model.train`), from its thread.

    Attributes
    ----------
    started
        ``(schedule)``: a dict with ``epochs_planned``, ``steps_per_epoch``,
        ``n_train`` and ``n_validation``.
    epochFinished
        ``(row)``: the epoch's history row (``epoch``, ``train_loss``,
        ``val_loss``, ``val_rmse_nm``, ``lr``, ``time_s``) with ``best_epoch``
        and ``epochs`` (planned): what a live loss plot draws.
    finished
        ``(metrics)``: the training's metrics (``TrainResult.metrics``).
    """

    started = Signal(object)
    epochFinished = Signal(object)
    finished = Signal(object)


class CalibrationSignals(SignalGroup):
    """Signals of a calibration acquisition
    (:func:`axialtrack.acquire.run_calibration`).

    ``started`` and ``finished`` come from the thread that called it,
    ``frameStored`` from pymmcore-plus's MDA thread (as its ``frameReady``
    does). Cancel with ``core.mda.cancel()``.

    Attributes
    ----------
    started
        ``(path, n_planned)``: the run store is open; frames the sequence holds.
    frameStored
        ``(n, n_planned)``: frames stored so far (a progress bar).
    finished
        ``(path, acquisition)``: the store is closed; its ``acquisition``
        attributes (``status``: ``"complete"``, ``"cancelled"``,
        ``"incomplete"`` or ``"error"``, ``reason``, ``n_frames``, ...).
    """

    started = Signal(object, int)
    frameStored = Signal(int, int)
    finished = Signal(object, object)
