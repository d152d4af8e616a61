"""Image data: the datasets as verified uint8 tensors, their files, the validation split and augmentation."""
