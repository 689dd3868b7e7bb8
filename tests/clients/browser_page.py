"""Headless Chromium (WebDriver, through chromedriver) on the dsocr web page (run by tests/server.rs).

Usage: browser_page.py BASE_URL IMAGE NOT_AN_IMAGE PDF SCREENSHOT
Uploads IMAGE, waits for the result, checks the markdown panel, the boxes on the overlay, the
hover link between them and the downloads; then uploads a file that is not an image and checks
the error message; then a two-page PDF and the page navigation. Saves a screenshot of the image's
result.
"""
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, image, bad, pdf, screenshot = sys.argv[1:6]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
]:
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(base + "/")
    assert driver.title == "dsocr", driver.title
    wait = WebDriverWait(driver, 180)
    driver.find_element(By.ID, "file").send_keys(image)
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    driver.find_element(By.ID, "ngram-size").send_keys("2")
    driver.find_element(By.ID, "ngram-window").send_keys("256")
    run = driver.find_element(By.ID, "run")
    assert run.is_enabled()
    run.click()

    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay .box"))
    wait.until(lambda d: "Done" in d.find_element(By.ID, "status").text)
    boxes = driver.find_elements(By.CSS_SELECTOR, "#overlay .box")
    assert len(boxes) == 1, len(boxes)
    assert boxes[0].text == "text", boxes[0].text
    assert boxes[0].size["width"] > 50 and boxes[0].size["height"] > 50, boxes[0].size
    markdown = driver.find_element(By.ID, "markdown")
    assert markdown.is_displayed()
    blocks = markdown.find_elements(By.CSS_SELECTOR, ".block")
    assert len(blocks) == 1 and blocks[0].text == "Hello world", [b.text for b in blocks]
    assert driver.find_element(By.ID, "page-image").get_attribute("naturalWidth") != "0"

    ActionChains(driver).move_to_element(blocks[0]).perform()
    wait.until(lambda d: "hl" in d.find_element(By.CSS_SELECTOR, "#overlay .box").get_attribute("class"))
    for link, name in [("download-mmd", "page.mmd"), ("download-json", "page.json")]:
        a = driver.find_element(By.ID, link)
        assert a.get_attribute("href").startswith("blob:"), a.get_attribute("href")
        assert a.get_attribute("download") == name, a.get_attribute("download")
    assert "Hello world" in driver.find_element(By.ID, "live").get_attribute("textContent")
    driver.save_screenshot(screenshot)

    driver.find_element(By.ID, "file").send_keys(bad)
    driver.find_element(By.ID, "run").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    error = driver.find_element(By.ID, "error").text
    assert error.startswith("Unsupported file:") and "not a recognised image" in error, error

    # A PDF of two pages: one box per page, the arrows move between them.
    driver.find_element(By.ID, "file").send_keys(pdf)
    driver.find_element(By.ID, "run").click()
    wait.until(lambda d: "Done: 2 page(s)" in d.find_element(By.ID, "status").text)
    assert not driver.find_element(By.ID, "error").is_displayed()
    label = driver.find_element(By.ID, "page-label")
    assert label.text == "page 1 (1 of 2)", label.text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#overlay .box")) == 1
    driver.find_element(By.ID, "next").click()
    wait.until(lambda d: d.find_element(By.ID, "page-label").text == "page 2 (2 of 2)")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#overlay .box")) == 1
    assert driver.find_element(By.ID, "next").get_attribute("disabled") is not None
    assert driver.find_element(By.ID, "page-image").get_attribute("src").startswith("data:image/jpeg")
    assert driver.find_element(By.ID, "download-json").get_attribute("download") == "two.json"
    print("browser: ok")
finally:
    driver.quit()
