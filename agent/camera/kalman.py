"""Constant-velocity Kalman filter over a box (centre x, centre y, width, height) per frame."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.camera.geometry import Box

Vector = npt.NDArray[np.float64]
_F = np.eye(8)
_F[:4, 4:] = np.eye(4)
_H = np.eye(4, 8)
STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160


def box_to_z(box: Box) -> Vector:
    x1, y1, x2, y2 = box
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


class KalmanBox:
    """State (cx, cy, w, h, vx, vy, vw, vh); noise scaled by the box size (as in ByteTrack/SORT)."""

    def __init__(self, box: Box) -> None:
        z = box_to_z(box)
        self.x: Vector = np.concatenate([z, np.zeros(4)])
        size = np.array([z[2], z[3], z[2], z[3]])
        std = np.concatenate([2 * STD_POSITION * size, 10 * STD_VELOCITY * size])
        self.P: Vector = np.diag(std**2)

    def _size(self) -> Vector:
        w, h = max(self.x[2], 1.0), max(self.x[3], 1.0)
        return np.array([w, h, w, h])

    def predict(self) -> None:
        size = self._size()
        q = np.diag(np.concatenate([STD_POSITION * size, STD_VELOCITY * size]) ** 2)
        self.x = _F @ self.x
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)
        self.P = _F @ self.P @ _F.T + q

    def update(self, box: Box) -> None:
        r = np.diag((STD_POSITION * self._size()) ** 2)
        s = _H @ self.P @ _H.T + r
        gain = np.linalg.solve(s, (self.P @ _H.T).T).T
        self.x = self.x + gain @ (box_to_z(box) - _H @ self.x)
        self.P = (np.eye(8) - gain @ _H) @ self.P

    def hold(self, box: Box) -> None:
        """The object is known to stand still at ``box``: reset position, zero velocity."""
        self.x = np.concatenate([box_to_z(box), np.zeros(4)])

    def freeze_size(self) -> None:
        """Stop the box growing or shrinking (no measurement supports a change of size)."""
        self.x[6:8] = 0.0

    def peek(self) -> Box:
        """The box one frame ahead, without changing the filter."""
        cx, cy, w, h = (float(v) for v in (_F @ self.x)[:4])
        w, h = max(w, 1.0), max(h, 1.0)
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    @property
    def box(self) -> Box:
        cx, cy, w, h = (float(v) for v in self.x[:4])
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
