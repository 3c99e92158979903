"""Reading scans: discovery of scan files, the readers (2-D images, NIfTI, BraTS, DICOM) and
the graph's input form (`loading`). numpy, OpenCV and (lazily) nibabel and pydicom."""
