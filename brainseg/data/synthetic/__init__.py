"""The built-in synthetic samples (kaggle_3m and BraTS layouts) and the phantoms they are drawn
from; the real readers are in `brainseg.data`."""
