"""Build the small int8 TFLite CNNs the TFLite import tests run (tests/data/tflite/*.tflite).

Run it with TensorFlow in its own virtual environment (never hwsim's: TensorFlow is not a
dependency of hwsim, only of this script)::

    python -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu==2.21.0 \
        scikit-learn
    /work/tfvenv/bin/python tests/data/make_tflite.py tests/data/tflite

Each model is a Keras network converted with full-integer post-training quantization
(``tf.lite.Optimize.DEFAULT`` + a representative data set, ``TFLITE_BUILTINS_INT8``): int8
activations, per-channel int8 weights of conv / depthwise conv, int32 biases. Weights are drawn
from fixed seeds (the digits model is trained for a few epochs); the files are deterministic for
one TensorFlow version. The models:

* ``cnn_relu`` -- conv + ReLU, depthwise conv, residual ADD, AVERAGE_POOL_2D, strided conv,
  MAX_POOL_2D, MEAN (global average pooling), FULLY_CONNECTED, SOFTMAX; float input and
  output (QUANTIZE / DEQUANTIZE);
* ``cnn_relu6`` -- ReLU6 fused into conv, depthwise conv and dense, batch norm folded, Flatten
  (RESHAPE of an NHWC tensor), two dense layers; int8 input and output;
* ``cnn_pad_concat`` -- ZeroPadding2D (PAD), CONCATENATION of two branches on channels, MUL of
  two activations, AVERAGE_POOL_2D with 'same' padding, Flatten, dense, SOFTMAX;
* ``digits_cnn`` -- a CNN trained on scikit-learn's 8x8 digits (hwsim's ``digits-train``
  split), the README's example: ``hwsim run tests/data/tflite/digits_cnn.tflite --data digits``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

keras = tf.keras


def _convert(model, calib: np.ndarray, int8_io: bool) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def rep():
        for i in range(len(calib)):
            yield [calib[i : i + 1]]

    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def cnn_relu() -> keras.Model:
    x = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    b = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(a)
    b = keras.layers.Conv2D(8, 1)(b)
    y = keras.layers.Add()([a, b])
    y = keras.layers.ReLU()(y)
    y = keras.layers.AveragePooling2D(2)(y)
    y = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(y)
    y = keras.layers.MaxPooling2D(2, strides=1)(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(10)(y)
    y = keras.layers.Softmax()(y)
    return keras.Model(x, y, name="cnn_relu")


def cnn_relu6() -> keras.Model:
    x = keras.Input((12, 12, 2))
    y = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU(6.0)(y)
    y = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(y)
    y = keras.layers.ReLU(6.0)(y)
    y = keras.layers.Conv2D(8, 3, activation="relu6")(y)
    y = keras.layers.MaxPooling2D(2)(y)
    y = keras.layers.Flatten()(y)
    y = keras.layers.Dense(24, activation="relu6")(y)
    y = keras.layers.Dense(5)(y)
    return keras.Model(x, y, name="cnn_relu6")


def cnn_pad_concat() -> keras.Model:
    x = keras.Input((10, 10, 3))
    y = keras.layers.ZeroPadding2D(((1, 2), (2, 1)))(x)
    y = keras.layers.Conv2D(8, 3, activation="relu")(y)
    p = keras.layers.Conv2D(4, 1, activation="relu")(y)
    q = keras.layers.Conv2D(6, 3, padding="same")(y)
    y = keras.layers.Concatenate(axis=-1)([p, q])
    g = keras.layers.Conv2D(10, 1)(y)
    y = keras.layers.Multiply()([y, g])
    y = keras.layers.AveragePooling2D(3, strides=2, padding="same")(y)
    y = keras.layers.Flatten()(y)
    y = keras.layers.Dense(7)(y)
    y = keras.layers.Softmax()(y)
    return keras.Model(x, y, name="cnn_pad_concat")


def digits_cnn(x_train, y_train) -> keras.Model:
    x = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(y)
    y = keras.layers.Conv2D(16, 1, activation="relu")(y)
    y = keras.layers.MaxPooling2D(2)(y)
    y = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(10)(y)
    y = keras.layers.Softmax()(y)
    m = keras.Model(x, y, name="digits_cnn")
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0)
    return m


def _digits_train():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / np.float32(16.0))[:, :, :, None]
    keep = np.arange(len(x)) % 3 != 0  # hwsim's digits-train split (hwsim.data)
    return x[keep], d.target[keep]


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for build, shape, int8_io in (
        (cnn_relu, (16, 16, 3), False),
        (cnn_relu6, (12, 12, 2), True),
        (cnn_pad_concat, (10, 10, 3), False),
    ):
        model = build()
        calib = rng.uniform(-1.0, 1.0, (64, *shape)).astype(np.float32)
        (out_dir / f"{model.name}.tflite").write_bytes(_convert(model, calib, int8_io))
    xd, yd = _digits_train()
    model = digits_cnn(xd, yd)
    (out_dir / "digits_cnn.tflite").write_bytes(_convert(model, xd[:200], False))
    for f in sorted(out_dir.glob("*.tflite")):
        print(f, f.stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "tflite"))
