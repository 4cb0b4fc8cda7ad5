"""Package discovery for the wheel and the sdist (the rest of the metadata is in pyproject.toml).

Every package under lossdsl/ is found, not listed, so a new subpackage cannot be left out of the wheel.
The grammar sits at the top of the repository (grammar/) and is installed inside the package as
``lossdsl.grammar``; pyproject.toml alone cannot combine discovery with that one mapped folder.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["lossdsl", "lossdsl.*"]), "lossdsl.grammar"],
    package_dir={"lossdsl.grammar": "grammar"},
)
