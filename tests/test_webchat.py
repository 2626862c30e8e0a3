"""The browser chat page (Gradio ChatInterface) in headless Chromium, driven by Selenium."""
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from helpers import chatbot, serving, webchat

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no chromium / chromedriver on PATH (apt-get install chromium chromium-driver) to load the chat page")
QUESTION = "How much is the Pro plan?"
MAX_NEW_TOKENS = 12


def test_page_conversation_carries_system_prompt_and_history():
    bot = chatbot.Bot("r", None, None, "Be brief.")
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]
    assert webchat.conversation(bot, "and?", history) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}]


@pytest.fixture
def page(smoke_chat_run, tmp_path):
    """`python -m helpers.webchat` on the smoke run at a free 127.0.0.1 port; its process group is killed after."""
    port = serving.free_port()
    log = tmp_path / "webchat.log"
    proc = subprocess.Popen([sys.executable, "-m", "helpers.webchat", str(smoke_chat_run), "--port", str(port),
                             "--max-new-tokens", str(MAX_NEW_TOKENS)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"the chat page exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the chat page did not come up:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        serving.stop(proc)
    assert "gradio.live" not in log.read_text()  # no share link was made


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless Chromium through chromedriver, offline flags, a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_AVOID_STATS", "true")  # Selenium Manager sends nothing (and is not needed: paths given)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow
@needs_browser
def test_chat_page_answers_a_typed_message_in_chromium(smoke_chat_run, page, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    bot = chatbot.load(smoke_chat_run)
    expected = " ".join(chatbot.reply(bot, chatbot.new_conversation(bot) + [{"role": "user", "content": QUESTION}],
                                      MAX_NEW_TOKENS).split())
    browser.get(page)
    assert smoke_chat_run.name in browser.title or smoke_chat_run.name in browser.page_source
    box = WebDriverWait(browser, 120).until(lambda d: d.find_element(By.CSS_SELECTOR, "textarea"))
    box.send_keys(QUESTION, Keys.ENTER)

    def answer(driver) -> str | bool:
        bubbles = driver.find_elements(By.CSS_SELECTOR, ".message.bot")
        text = " ".join(bubbles[-1].text.split()) if bubbles else ""
        return text if text == expected else False

    assert WebDriverWait(browser, 300, poll_frequency=0.5).until(answer) == expected  # the model's greedy answer
    users = browser.find_elements(By.CSS_SELECTOR, ".message.user")
    assert [u.text.strip() for u in users] == [QUESTION]
