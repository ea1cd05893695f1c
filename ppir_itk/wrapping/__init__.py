"""ITK and SimpleITK adapters (installed as ``ppir_itk.wrapping``): images and transforms."""
