"""Painting in a thread of its own, beside the LM (painting="overlap"), decoupled from the generator's step.

The generator hands a picture over (start) once its dream block's condition is computed, and goes on writing. The
painter thread loops: take the pictures started and drop those dropped since its last turn, take one denoising step
for one size group, and, for the pictures that group finished, decode them (VAE), round them to 8 bits and copy
them to the host, then put them on the done queue. The generator takes what is done at the start of each of its
steps without waiting (collect), and waits (wait) only when every document it holds waits for a picture.

Which size group steps next: fair shares of the painter's time, one share per latent size. Each group is charged
the seconds its steps took, and the group charged least steps next (ties: the smallest latents first). A group that
appears is charged as much as the least charged group in flight, so it neither waits for the others to catch up
nor takes the painter over. So a 64 px picture beside a 512 px one takes many steps while the big one takes one,
instead of every step of the small one lasting as long as a step of both, as when every group steps each turn
(stepwise painting in the generator's thread). Shares are per size, not per picture: a size group is one UNet call
whatever its number of pictures, and a job's many small pictures then cannot starve another job's one big picture
either. The UNet call and the VAE decode cannot be cut, so a small picture may still wait for one step of the big
one to end.

Devices. On the CPU the two threads run torch ops on two cores at once (torch releases the GIL inside its ops;
each thread has its own intra-op threads, set here to the generator's count). On CUDA the painter runs on a stream
of its own: the generator records an event after computing a picture's condition and the painter's stream waits
for it (no host wait); the painter synchronises only its own stream, in its own thread, when it copies a finished
picture to the host, and hands the picture over with an event the generator's stream waits for; each tensor that
crosses streams is recorded on the stream that reads it, so the caching allocator does not reuse it early.

Failures. A picture that cannot start (its request asks more steps than the model's schedule allows) fails its own
document (Failed on the done queue). Anything else raised in the thread ends it, and the generator raises that
exception at its next collect or wait: a painter never hangs the run. stop() ends the thread and joins it; the
generator stops it when a run ends, however it ends, and in Generator.release().
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from ..errors import DreamgenError
from .diffusion import ImageRequest, Picture, decode_pictures, denoise_step, start_picture
from .images import tensor_to_pil


@dataclass
class Painted:
    """A finished picture: (3, H, W) in [0, 1], rounded to 8 bits, on the model's device, and its host copy."""

    key: int
    image: torch.Tensor
    pil: object
    ready: object = None  # CUDA: an event recorded after the image was written, on the painter's stream


@dataclass
class Failed:
    """A picture that could not start: its document fails with `error`."""

    key: int
    error: Exception


class PainterThread:
    """Paints the pictures handed over, in a thread of its own, while the generator writes."""

    def __init__(self, model, components, name: str = "dreamgen-painter"):
        self.model, self.components = model, components
        self.device = model.device
        self.cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._threads = torch.get_num_threads()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # something to paint, to drop, or to stop
        self._finished = threading.Condition(self._lock)  # a picture done, or the thread ended
        self._inbox: list[tuple[int, ImageRequest, object]] = []
        self._dropped: set[int] = set()
        self._done: list[Painted | Failed] = []
        self._error: BaseException | None = None
        self._stopping = False
        # the thread's own, never read elsewhere
        self._pictures: dict[int, Picture] = {}
        self._charged: dict[tuple, float] = {}  # seconds of painting charged to each latent size in flight
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ generator side
    def start(self, key: int, request: ImageRequest) -> None:
        ready = None
        if self.cuda:  # the condition was computed on the generator's stream: the painter's waits for it there
            ready = torch.cuda.Event()
            ready.record()
        with self._lock:
            self._inbox.append((key, request, ready))
            self._changed.notify()

    def drop(self, key: int) -> None:
        """The document has left: its picture is not painted further, and its result (if done) is dropped. Only
        for a picture handed over and not collected."""
        with self._lock:
            before = len(self._done)
            self._done = [d for d in self._done if d.key != key]
            if len(self._done) == before:
                self._dropped.add(key)
            self._changed.notify()

    def collect(self) -> list[Painted | Failed]:
        """What is done now, without waiting; raises what ended the thread."""
        with self._lock:
            return self._take()

    def wait(self, timeout: float) -> list[Painted | Failed]:
        """What is done, waiting up to `timeout` seconds for something to be; raises what ended the thread."""
        with self._lock:
            if not self._done and self._error is None and self._thread.is_alive():
                self._finished.wait(timeout)
            return self._take()

    def _take(self) -> list[Painted | Failed]:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        done, self._done = self._done, []
        if self.cuda:
            stream = torch.cuda.current_stream(self.device)
            for item in done:
                if isinstance(item, Painted):
                    stream.wait_event(item.ready)  # a device-side wait: the host goes on
                    item.image.record_stream(stream)
        return done

    def stop(self) -> None:
        """End the thread (after the UNet call it may be in) and join it. Idempotent."""
        with self._lock:
            self._stopping = True
            self._changed.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------------------------------ painter side
    def _serve(self) -> None:
        try:
            torch.set_num_threads(self._threads)  # per thread: the generator's count, not the process default
            with torch.no_grad():  # grad mode is per thread too
                if self.cuda:
                    with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                        self._loop()
                else:
                    self._loop()
        except BaseException as e:  # noqa: BLE001 - it is raised again in the generator's thread
            with self._lock:
                self._error = e
                self._finished.notify_all()
        else:
            with self._lock:
                self._finished.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._stopping or self._inbox or self._dropped or self._pictures):
                    self._changed.wait()
                if self._stopping:
                    return
                inbox, self._inbox = self._inbox, []
                dropped, self._dropped = self._dropped, set()
            for key in dropped:
                self._pictures.pop(key, None)
            failed = [self._start(key, request, ready) for key, request, ready in inbox if key not in dropped]
            if any(failed):
                self._hand_back([f for f in failed if f])
            group = self._next_group()
            if group:
                self._step(group)

    def _start(self, key: int, request: ImageRequest, ready) -> Failed | None:
        if ready is not None:
            self._stream.wait_event(ready)
            for tensor in (request.cond, request.uncond):
                tensor.record_stream(self._stream)
        head = self.model.head
        try:
            self._pictures[key] = start_picture(request, head.scheduler_config, head.unet.config.in_channels,
                                                head.vae_scale_factor, self.device, self.model.dtype)
        except DreamgenError as e:  # this picture's request cannot be painted: its document fails alone
            return Failed(key, e)
        return None

    def _next_group(self) -> list[tuple[int, Picture]]:
        """The pictures of the latent size charged least so far (fair shares of the painter's time)."""
        by_size: dict[tuple, list[tuple[int, Picture]]] = {}
        for key, picture in self._pictures.items():
            by_size.setdefault(tuple(picture.latents.shape), []).append((key, picture))
        for size in list(self._charged):
            if size not in by_size:
                del self._charged[size]  # a size that left: its account closes
        floor = min(self._charged.values(), default=0.0)
        for size in by_size:
            self._charged.setdefault(size, floor)  # a newcomer starts level with the least charged
        if not by_size:
            return []
        size = min(by_size, key=lambda s: (self._charged[s], _area(s)))
        return by_size[size]

    def _step(self, group: list[tuple[int, Picture]]) -> None:
        size = tuple(group[0][1].latents.shape)
        started = time.perf_counter()
        denoise_step([p for _, p in group], self.components.unet, getattr(self.components, "split_unet", None))
        done = [(key, p) for key, p in group if p.done]
        if done:
            self._hand_back(self._finish(done))
        self._charged[size] = self._charged.get(size, 0.0) + time.perf_counter() - started

    def _finish(self, done: list[tuple[int, Picture]]) -> list[Painted]:
        for key, _ in done:
            del self._pictures[key]
        images = decode_pictures([p for _, p in done], self.components.vae_decode)
        painted = []
        for (key, _), image in zip(done, images):
            image = (image * 255).round() / 255  # as stored (8-bit): what the document reads back
            pil = tensor_to_pil(image)  # CUDA: waits for this stream only, in this thread
            ready = None
            if self.cuda:
                ready = torch.cuda.Event()
                ready.record(self._stream)
            painted.append(Painted(key, image, pil, ready))
        return painted

    def _hand_back(self, items: list[Painted | Failed]) -> None:
        with self._lock:
            dropped = self._dropped
            self._done.extend(item for item in items if item.key not in dropped)
            self._finished.notify_all()


def _area(size: tuple) -> int:
    return size[-1] * size[-2]
