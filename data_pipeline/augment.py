"""The training views' random stages as FFCV pipeline operations whose draws are functions of
(seed, epoch, sample index) (data_pipeline.rng), in place of FFCV's RandomTranslate,
RandomHorizontalFlip and RandomResizedCropRGBImageDecoder, which draw from the generator of
whichever numba thread handles an image.

Each stage takes its key once per batch, outside its parallel loop, from numba's generator of
the pipeline's thread (seeded per batch with the loader's seed and epoch, data_pipeline.ffcv_compat),
then keys each image by its index in the dataset file, which FFCV hands to a stage that asks
for it (`with_indices`) and to every decoder. Imports ffcv: import through data_pipeline.loaders,
after ffcv_compat.import_ffcv().
"""

from dataclasses import replace

import numpy as np
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation

from data_pipeline.ffcv_compat import keyed_resized_crop
from data_pipeline.rng import STAGE_KEYS, sample_key, uniform


class Translate(Operation):
    """The cifar view's shift: the image moved by up to `padding` pixels each way (black where it
    leaves the frame), as a crop of the image padded with `padding` black pixels. Draws 0-1."""

    def __init__(self, padding: int):
        super().__init__()
        self.padding = padding

    def generate_code(self):
        my_range = Compiler.get_iterator()
        pad, span = self.padding, 2 * self.padding + 1

        def translate(images, dst, indices):
            key = np.random.randint(0, STAGE_KEYS)
            n, h, w, _ = images.shape
            for i in my_range(n):
                own = sample_key(key, indices[i])
                dy = int(uniform(own, 0) * span) - pad  # out[r, c] = in[r + dy, c + dx]
                dx = int(uniform(own, 1) * span) - pad
                dst[i] = 0
                r0, r1, c0, c1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
                dst[i, r0:r1, c0:c1] = images[i, r0 + dy : r1 + dy, c0 + dx : c1 + dx]
            return dst

        translate.is_parallel = True
        translate.with_indices = True
        return translate

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)


class Flip(Operation):
    """A horizontal flip of half the images: those whose draw 0 is below 0.5."""

    def generate_code(self):
        my_range = Compiler.get_iterator()

        def flip(images, dst, indices):
            key = np.random.randint(0, STAGE_KEYS)
            for i in my_range(images.shape[0]):
                if uniform(sample_key(key, indices[i]), 0) < 0.5:
                    dst[i] = images[i, :, ::-1]
                else:
                    dst[i] = images[i]
            return dst

        flip.is_parallel = True
        flip.with_indices = True
        return flip

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)


def crop_decoder(output_size, crop, scale=None, ratio=None):
    """An FFCV decoder that cuts the box `crop(height, width, scale, ratio, key)` (a function of
    data_pipeline.geometry, compiled by numba; key: the image's, data_pipeline.rng) from each
    image and resizes it to output_size. FFCV's ResizedCropRGBImageDecoder with the image's key
    handed to the crop."""

    class KeyedCropDecoder(ResizedCropRGBImageDecoder):
        def __init__(self):
            super().__init__(output_size)
            self.scale, self.ratio = scale, ratio

        @property
        def get_crop_generator(self):
            return crop

        def generate_code(self):
            return keyed_resized_crop(self.memory_read, crop, self.scale, self.ratio)

    return KeyedCropDecoder()
