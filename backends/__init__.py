"""hal's built-in backend plugins, one package per backend (imported as ``hal_backends``)."""
